//! Well-known values that look personal but are not: what agent harnesses put in their own
//! system prompts and tool descriptions (Claude Code's `Co-Authored-By: Claude
//! <noreply@anthropic.com>`, `user@example.com` in examples, `192.0.2.1` in documentation).
//! Blocking or redacting them makes a harness unusable behind the guard (issue 19) and protects
//! nobody.
//!
//! The list is deliberately small and exact:
//! - e-mail: a no-reply mailbox at any domain (`noreply`, `no-reply`, `donotreply`, ...,
//!   with or without a `+tag`), and a generic placeholder mailbox (`user`, `you`, `name`,
//!   `your.name`, ...) at a domain reserved for documentation by RFC 2606 / RFC 6761
//!   (`example.com`/`.org`/`.net` and their subdomains, `*.example`, `*.test`, `*.invalid`,
//!   `*.localhost`). A name-like mailbox at an example domain (`jane.doe@example.com`) stays
//!   personal: that is how fixtures stand in for a real address;
//! - IP: the IPv4 documentation ranges of RFC 5737 (192.0.2.0/24, 198.51.100.0/24,
//!   203.0.113.0/24). Loopback, unspecified and IPv6's documentation prefix 2001:db8::/32
//!   (RFC 3849) are not on the list: the guard's evaluation corpora (presidio's recognizer
//!   cases, the generated set) label them as addresses to find, and the guard's owner decides.

use std::net::IpAddr;

use super::Kind;

/// True when `value` (the text of a finding of `kind`) is a well-known non-personal value.
pub fn is_well_known(kind: Kind, value: &str) -> bool {
    match kind {
        Kind::Email => benign_email(value),
        Kind::IpAddress => benign_ip(value),
        _ => false,
    }
}

const NO_REPLY: &[&str] = &["noreply", "no-reply", "no_reply", "donotreply", "do-not-reply", "do_not_reply"];

const PLACEHOLDER_MAILBOXES: &[&str] = &[
    "user",
    "username",
    "name",
    "email",
    "mail",
    "you",
    "yourname",
    "your.name",
    "your-name",
    "your_name",
    "your.email",
    "youremail",
    "your-email",
    "your_email",
    "me",
    "someone",
    "somebody",
    "test",
    "foo",
    "bar",
    "example",
    "admin",
    "info",
    "hello",
    "contact",
    "support",
    "sales",
    "team",
    "dev",
    "developer",
];

fn reserved_domain(domain: &str) -> bool {
    let d = domain.trim_end_matches('.');
    ["example.com", "example.org", "example.net"].iter().any(|r| d == *r || d.ends_with(&format!(".{r}")))
        || [".example", ".test", ".invalid", ".localhost"].iter().any(|s| d.ends_with(s))
        || ["example", "localhost"].contains(&d)
}

fn benign_email(value: &str) -> bool {
    let v = value.trim_start_matches("mailto:").to_ascii_lowercase();
    let Some((local, domain)) = v.rsplit_once('@') else { return false };
    let mailbox = local.split('+').next().unwrap_or(local);
    if NO_REPLY.contains(&mailbox) {
        return true;
    }
    PLACEHOLDER_MAILBOXES.contains(&mailbox) && reserved_domain(domain)
}

fn benign_ip(value: &str) -> bool {
    let v = value.trim_matches(|c| c == '[' || c == ']');
    let v = v.split('/').next().unwrap_or(v);
    match v.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            let o = a.octets();
            [(192, 0, 2), (198, 51, 100), (203, 0, 113)].contains(&(o[0], o[1], o[2]))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_reply_and_placeholder_mailboxes_only() {
        for v in [
            "noreply@anthropic.com",
            "no-reply@accounts.example.net",
            "NoReply+build@ci.company.io",
            "user@example.com",
            "you@mail.example.org",
            "your.name@company.test",
        ] {
            assert!(is_well_known(Kind::Email, v), "{v}");
        }
        for v in ["jane.doe@example.com", "user@corp-mail.net", "bob@example.org", "noreplyx@corp.net"] {
            assert!(!is_well_known(Kind::Email, v), "{v}");
        }
    }

    #[test]
    fn documentation_ipv4_ranges_only() {
        for v in ["192.0.2.1", "198.51.100.23/24", "203.0.113.255"] {
            assert!(is_well_known(Kind::IpAddress, v), "{v}");
        }
        for v in ["10.1.2.3", "81.2.69.160", "192.0.3.1", "2001:db8::1", "127.0.0.1", "::1", "not an ip"] {
            assert!(!is_well_known(Kind::IpAddress, v), "{v}");
        }
        assert!(!is_well_known(Kind::Phone, "noreply@anthropic.com"));
    }
}
