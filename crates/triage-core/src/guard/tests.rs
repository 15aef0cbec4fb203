//! Unit tests of the guard: one positive and one negative case per family, redaction and the
//! streaming restorer. The labelled-data evaluation is `tests/guard_eval.rs`.

use super::*;
use crate::openai::ChatRequest;

/// The kinds the rules find (the entity recogniser has its own tests below).
fn kinds(text: &str) -> Vec<Kind> {
    Guard::rules_only().scan(text).into_iter().map(|f| f.kind).collect()
}

#[test]
fn every_rule_compiles() {
    for spec in rules::specs() {
        if let Err(e) = rules::compile(&spec) {
            panic!("rule {} does not compile: {e}", spec.name);
        }
    }
    assert_eq!(Guard::new().rule_count(), rules::specs().len());
}

#[test]
fn finds_personal_data() {
    assert_eq!(kinds("write to jane.doe@example.com today"), vec![Kind::Email]);
    assert_eq!(kinds("card 4012 8888 8888 1881 please"), vec![Kind::CreditCard]);
    assert_eq!(kinds("IBAN GB82 WEST 1234 5698 7654 32."), vec![Kind::Iban]);
    assert_eq!(kinds("my SSN is 078-05-1123"), vec![Kind::UsSsn]);
    assert_eq!(kinds("server at 81.2.69.160 is down"), vec![Kind::IpAddress]);
    assert_eq!(kinds("call +41 44 668 18 00 now"), vec![Kind::Phone]);
    assert_eq!(kinds("Phone: 044 668 18 00"), vec![Kind::Phone]);
    assert_eq!(kinds("born on 12/03/1985 in Bern"), vec![Kind::DateOfBirth]);
    assert_eq!(kinds("Dear Alice Martin, thanks"), vec![Kind::PersonName]);
}

#[test]
fn rejects_bad_checksums_and_lookalikes() {
    assert!(kinds("card 4012 8888 8888 1882").is_empty());
    assert!(kinds("GB82 WEST 1234 5698 7654 33").is_empty());
    assert!(kinds("SSN 666-12-3456").is_empty());
    assert!(kinds("version 1.2.3 released 2024-05-01, id 550e8400-e29b-41d4-a716-446655440000").is_empty());
    assert!(kinds("commit 3f786850e387550fdab836ed7e6dc881de23001b").is_empty());
    assert!(kinds("use std::io::Read; fn main() {}").is_empty());
    assert!(kinds("256.1.1.1 and 10:30:00").is_empty());
}

#[test]
fn finds_secrets() {
    let aws = format!("aws_access_key_id = AKIA{}", "IOSFODNN7ABCDEFG");
    assert_eq!(kinds(&aws), vec![Kind::AwsAccessKey]);
    let gh = format!("token ghp_{}", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8");
    assert_eq!(kinds(&gh), vec![Kind::GithubToken]);
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----";
    assert_eq!(kinds(pem), vec![Kind::PrivateKey]);
    assert_eq!(kinds("DATABASE_URL=postgres://app:s3cr3tP4ss@db.internal:5432/app"), vec![Kind::DatabaseUrl]);
    assert_eq!(kinds(r#"password = "hunter2hunter2""#), vec![Kind::Password]);
    assert_eq!(kinds("api_key: 9fQ2xL7pKd81ZmW3vT0aYb"), vec![Kind::GenericSecret]);
}

#[test]
fn finding_debug_has_no_text() {
    let text = "mail bob@example.org";
    let f = Guard::rules_only().scan(text);
    let dbg = format!("{f:?}");
    assert!(!dbg.contains("bob@"), "{dbg}");
}

#[test]
fn redact_and_restore_request() {
    let body = r#"{"model":"auto","messages":[
        {"role":"system","content":"Contact ops@example.com"},
        {"role":"user","content":[{"type":"text","text":"mail ops@example.com and eve@example.net"}]},
        {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"send","arguments":"{\"to\":\"eve@example.net\"}"}}]},
        {"role":"tool","tool_call_id":"c1","content":"sent to eve@example.net"}
    ],"tools":[{"type":"function","function":{"name":"send","description":"owner: ops@example.com","parameters":{"type":"object","properties":{"to":{"type":"string","default":"ops@example.com"}}}}}]}"#;
    let mut req: ChatRequest = match serde_json::from_str(body) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let g = Guard::rules_only();
    let found = g.scan_request(&req);
    assert_eq!(found.len(), 7);
    assert!(found.iter().any(|(l, _)| matches!(l, Location::ToolCallArguments { pointer, .. } if pointer == "/to")));
    assert!(found.iter().any(|(l, _)| matches!(l, Location::ToolParameters { .. })));
    let original = req.clone();
    let r = g.redact_request(&mut req, |k| k == Kind::Email);
    assert_eq!(r.len(), 2);
    let text = serde_json::to_string(&req).unwrap_or_default();
    assert!(!text.contains("@example"), "{text}");
    assert!(text.contains("<EMAIL_1>") && text.contains("<EMAIL_2>"));
    assert_eq!(
        req.messages[2].tool_calls.as_ref().map(|c| c[0].function.arguments.clone()),
        Some(r#"{"to":"<EMAIL_2>"}"#.to_owned())
    );
    // Restoring each text gives the original back.
    let restored = r.restore(&serde_json::to_string(&req).unwrap_or_default());
    let back: ChatRequest = match serde_json::from_str(&restored) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(back, original);
}

#[test]
fn restorer_handles_split_placeholders() {
    let g = Guard::rules_only();
    let (red, r) = g.redact_text("a@example.com then b@example.com", |_| true);
    assert_eq!(red, "<EMAIL_1> then <EMAIL_2>");
    let mut s = r.restorer();
    let mut out = String::new();
    for chunk in ["x <EMA", "IL_", "1", "> y <", "EMAIL_2", ">", " <EMAIL_9> <"] {
        out.push_str(&s.push(chunk));
    }
    out.push_str(&s.finish());
    assert_eq!(out, "x a@example.com y b@example.com <EMAIL_9> <");
    // Nothing is held back when a chunk cannot start a placeholder.
    let mut s = r.restorer();
    assert_eq!(s.push("plain text <b>"), "plain text <b>");
}

#[test]
fn existing_placeholder_text_is_not_reused() {
    let g = Guard::rules_only();
    let (red, r) = g.redact_text("literal <EMAIL_1> and a@example.com", |_| true);
    assert_eq!(red, "literal <EMAIL_1> and <EMAIL_2>");
    assert_eq!(r.restore(&red), "literal <EMAIL_1> and a@example.com");
}

#[test]
#[ignore]
fn timing_per_rule() {
    let sentences = [
        "The service handles about 1200 requests per second at peak, with a p99 latency of 45 ms.",
        "We upgraded the parser from version 2.3.1 to 2.4.0 last week and saw no regressions.",
        "Please refactor the function below so that it streams the response instead of buffering it.",
        "fn parse(input: &str) -> Result<Config, Error> { let v: Value = serde_json::from_str(input)?; Ok(Config::from(v)) }",
        "The cache keeps at most 4096 entries and evicts the least recently used one first.",
        "In 2023 the team moved the build to a monorepo; CI time dropped from 18 to 7 minutes.",
        "Run `cargo test --workspace` and check that all 312 tests pass before opening the pull request.",
        "The retry policy waits 100 ms, then 200 ms, then 400 ms, with up to 25% jitter, and gives up after 5 attempts.",
        "Our schema has three tables: users, orders and line_items; orders references users by user_id.",
        "Summarise the following meeting notes in five bullet points and list the open questions at the end.",
        "const MAX_RETRIES = 3; for (let i = 0; i < MAX_RETRIES; i++) { await sleep(2 ** i * 100); }",
        "The dashboard shows CPU at 63%, memory at 2.1 GB of 8 GB, and 14 open connections to the database.",
        "See section 4.2 of the design document for how the router picks the cheapest capable model.",
        "The test fixture lives in tests/fixtures/sample_response.json and is 3 KB long.",
        "Translate the paragraph into French, keeping the technical terms such as token, latency and throughput in English.",
        "SELECT id, created_at, status FROM jobs WHERE status = 'failed' ORDER BY created_at DESC LIMIT 50;",
    ];
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 8192 {
        text.push_str(sentences[i % sentences.len()]);
        text.push(' ');
        i += 1;
    }
    let t = std::time::Instant::now();
    let g = Guard::rules_only();
    println!("Guard::new: {:?}", t.elapsed());
    // Minimum over batches: robust against other processes on the machine.
    let time = |g: &Guard| {
        (0..30)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..10 {
                    std::hint::black_box(g.scan(&text));
                }
                t.elapsed() / 10
            })
            .min()
            .unwrap_or_default()
    };
    println!("scan: {:?}", time(&g));
    println!("no rules: {:?}", time(&Guard::from_rules(Vec::new(), None)));
    for spec in rules::specs() {
        let one = Guard::from_rules(vec![rules::compile(&spec).unwrap_or_else(|e| panic!("{e}"))], None);
        println!("{:30} {:?}", spec.name, time(&one));
    }
}

#[test]
#[ignore]
fn timing_redact() {
    let mut text = String::new();
    while text.len() < 8192 {
        text.push_str("The service handles about 1200 requests per second at peak, with a p99 latency of 45 ms. ");
        text.push_str("Contact jane.doe@example.com or +41 44 668 18 00 about it. ");
    }
    let body = serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]});
    let req: ChatRequest = serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
    let g = Guard::rules_only();
    let min = |f: &dyn Fn()| {
        (0..30)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..10 {
                    f();
                }
                t.elapsed() / 10
            })
            .min()
            .unwrap_or_default()
    };
    println!("scan_request: {:?}", min(&|| drop(std::hint::black_box(g.scan_request(&req)))));
    println!("clone: {:?}", min(&|| drop(std::hint::black_box(req.clone()))));
    println!(
        "redact_request: {:?}",
        min(&|| {
            let mut r = req.clone();
            drop(std::hint::black_box(g.redact_request(&mut r, |_| true)));
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 16, item 4: classes of misses and false alarms, one test per class. Values are
// generated or published sample values (no personal data).

#[test]
fn iban_in_lower_case() {
    assert_eq!(kinds("wire it to gb82 west 1234 5698 7654 32 today"), vec![Kind::Iban]);
    assert_eq!(kinds("iban: de89370400440532013000"), vec![Kind::Iban]);
    assert_eq!(kinds("Konto De89 3704 0044 0532 0130 00."), vec![Kind::Iban]);
    // The checksum still decides: one digit off is nothing.
    assert!(kinds("gb82 west 1234 5698 7654 33").is_empty());
}

#[test]
fn ssn_with_dots() {
    assert_eq!(kinds("SSN 078.05.1123 on file"), vec![Kind::UsSsn]);
    assert_eq!(kinds("her number is 219.09.9998."), vec![Kind::UsSsn]);
    assert!(kinds("SSN 666.12.3456").is_empty());
    assert!(kinds("pi is 3.14.1592 and v1.22.3333").is_empty());
}

#[test]
fn phone_in_unusual_groupings() {
    for p in [
        "+44 7 700 900 123",
        "+1-415-5550-132",
        "+49 (0)30 12 34 56 78",
        "0044 20 7946 0018",
        "(415)5550132",
        "415 555 0132",
        "020 7946 0018",
        "0171/234 56 78",
        "06-12 34 56 78",
        "415.5550.132",
    ] {
        let text = format!("reach me at {p} tomorrow");
        assert_eq!(kinds(&text), vec![Kind::Phone], "{p}");
    }
    // Numbers that are not phones keep quiet.
    assert!(kinds("order 0.5 0.25 0.125 of the mix").is_empty());
    assert!(kinds("released on 01.02.2023 as build 2024").is_empty());
}

#[test]
fn jwt_of_two_segments_without_signature() {
    let unsigned =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1c2VyLTQyIiwicm9sZSI6ImFkbWluIiwiaWF0IjoxNzAwMDAwMDAwfQ";
    assert_eq!(kinds(&format!("token {unsigned} sent")), vec![Kind::Jwt]);
    assert_eq!(kinds(&format!("Bearer-less: {unsigned}.")), vec![Kind::Jwt]);
    let two = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJleGFtcGxlLnRlc3QiLCJleHAiOjE5MDAwMDAwMDB9";
    assert_eq!(kinds(&format!("jwt={two}")), vec![Kind::Jwt]);
    // A header with a payload that is not JSON is not a token.
    assert!(kinds("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24gYXQgYWxs").is_empty());
}

#[test]
fn password_with_spaces_or_braces() {
    assert_eq!(kinds(r#"password = "correct horse battery staple""#), vec![Kind::Password]);
    assert_eq!(kinds(r#"db_password: "p{a}ss w0rd}9""#), vec![Kind::Password]);
    assert_eq!(kinds("db_pass = m{{h}o)p${e]nc2"), vec![Kind::Password]);
    assert_eq!(kinds(r#"DB_PASS='{Zq8!x}{2}'"#), vec![Kind::Password]);
    // A sentence for the reader is not a password.
    assert!(kinds(r#"password: "Enter your password here""#).is_empty());
}

#[test]
fn password_from_a_code_reference_is_not_a_secret() {
    for code in [
        "password = var.db_password",
        "password = var.db_password_v2",
        "password = local.creds[\"db\"]",
        "db_password = module.rds.master_password2",
        "password: Self::DEFAULT_PW",
        "secret = config.get('api')",
        "password = settings.DATABASES.default.PASSWORD",
    ] {
        assert!(kinds(code).is_empty(), "{code}");
    }
}

#[test]
fn secret_from_a_shell_command_is_not_a_secret() {
    for code in [
        "SECRET = $(cat /run/secrets/x)",
        "export DB_PASSWORD=$(cat /run/secrets/db_password)",
        "API_TOKEN=`vault read -field=token secret/app`",
        "SECRET_KEY=${SECRET_KEY:-}",
        "password=$DB_PASSWORD2",
        "secret_file = /run/secrets/app_secret_v2",
    ] {
        assert!(kinds(code).is_empty(), "{code}");
    }
}

#[test]
fn placeholder_credentials_are_not_secrets() {
    for doc in [
        "curl -u <user:password> https://api.example.com",
        "curl -u <username>:<password> https://api.example.com",
        "postgres://app:[PASSWORD]@db.example.com:5432/app",
        "https://[USER]:[PASSWORD]@example.com/repo.git",
        "mysql://root:<db-password>@localhost/app",
        "password = [PASSWORD]",
        "password: <your password>",
        "DB_URL=postgres://app:{password}@db/app",
        "redis://:YOUR_PASSWORD@cache:6379",
    ] {
        assert!(kinds(doc).is_empty(), "{doc}");
    }
    // A real-looking credential in the same place is still found.
    assert_eq!(kinds("postgres://app:Q7v!xr2Lp@db.example.com/app"), vec![Kind::DatabaseUrl]);
}

#[test]
fn constant_alphabets_are_not_secrets() {
    for code in [
        r#"ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789""#,
        r#"const BASE58_KEY_CHARS = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";"#,
        r#"token_alphabet: "0123456789abcdef""#,
        r#"SECRET_CHARS = "abcdefghijklmnopqrstuvwxyz""#,
        r#"api_key = "qwertyuiopasdfghjkl""#,
    ] {
        assert!(kinds(code).is_empty(), "{code}");
    }
    assert!(validate::is_alphabet("0123456789ABCDEF"));
    assert!(!validate::is_alphabet("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9a8b7c6d"));
}

#[test]
fn unquoted_value_after_a_hash_arrow_is_code() {
    // PHP/Ruby/Perl hash entries: a literal there is quoted; an unquoted value is an expression.
    assert!(kinds("'password' => m{{h}o)p${e]nob(ody[finds>-_$#thisone}}").is_empty());
    assert!(kinds("\"secret_key\" => get_secret($env),").is_empty());
    assert_eq!(kinds(r#"'password' => "Zq8!x2vLp9""#), vec![Kind::Password]);
}

#[test]
fn unquoted_statement_ending_in_a_semicolon_is_code() {
    for code in ["passwd = m{{h}o)p${e]nob(ody[finds>-_$#thisone}};", "private_key = derive_key(seed, 32);"] {
        assert!(kinds(code).is_empty(), "{code}");
    }
    // A `key=value;` list is not code: the password in a connection string is still found.
    assert_eq!(kinds("Server=db01;Database=app;Password=Zq8x2vLp9w;"), vec![Kind::Password]);
    // Quoted, the literal is a literal.
    assert_eq!(kinds(r#"db_password = "Zq8x2vLp9w";"#), vec![Kind::Password]);
}

#[test]
fn punctuation_only_values_are_not_secrets() {
    for code in ["password: ',.:-¨@*¿?!'", "password = ,.:-¨@*¿?!"] {
        assert!(kinds(code).is_empty(), "{code}");
    }
}

#[test]
fn alphabet_runs_in_sample_values_are_not_secrets() {
    for code in [
        r#"secret_key => "sk_abcdefghijklmnopqrstuvwxyz123","#,
        "sk-ant-api03-abc123xyz-456def789ghij-klmnopqrstuvwx-3456yza789bcde-1234fghijklmnopby56aaaogaopaaaabc123xyzAA",
    ] {
        assert!(kinds(code).is_empty(), "{code}");
    }
    assert!(validate::has_sample_run("abcdefghijkl"));
    assert!(!validate::has_sample_run("abcdefghijk"));
    // Random values keep being found.
    assert!(!validate::has_sample_run("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9a8b7c6d"));
    assert_eq!(kinds(r#"api_secret = "q8Zt3LmX0vR7pK2wN5yB""#), vec![Kind::Password]);
}

// ---------------------------------------------------------------------------------------------
// Issue 16, items 1 and 4: the entity recogniser (the real compiled-in weights). Names, streets
// and organisations below are generated placeholders.

/// True when `g` reports `kind` (or the rules' kind of the same group: `person_name`,
/// `postal_address`, `date_of_birth`) over (part of) `value` inside `text`.
fn finds(g: &Guard, text: &str, value: &str, kind: Kind) -> bool {
    let at = text.find(value).unwrap_or(usize::MAX);
    let span = at..at.saturating_add(value.len());
    let same = |k: Kind| {
        k == kind
            || matches!(
                (kind, k),
                (Kind::Person, Kind::PersonName)
                    | (Kind::Address, Kind::PostalAddress)
                    | (Kind::Date, Kind::DateOfBirth)
            )
    };
    g.scan(text).iter().any(|f| same(f.kind) && f.span.start < span.end && span.start < f.span.end)
}

#[test]
fn recognizer_weights_are_compiled_in() {
    assert!(Guard::new().has_recognizer());
    assert!(!Guard::rules_only().has_recognizer());
}

#[test]
fn name_with_no_trigger_word() {
    let g = Guard::new();
    let cases = [
        ("I want to add Greta Halvorsen as a beneficiary", "Greta Halvorsen"),
        ("Please forward the draft to Tomasz Wierzbicki before noon.", "Tomasz Wierzbicki"),
        ("Amara Okonkwo will present the results on the call.", "Amara Okonkwo"),
        ("Can you ask Lucien Marchetti to review the pull request?", "Lucien Marchetti"),
        ("The form was signed by Ingrid Solberg and Paulo Ferreira.", "Paulo Ferreira"),
    ];
    for (text, name) in cases {
        assert!(finds(&g, text, name, Kind::Person), "{text}");
    }
    // No person in plain technical text.
    let f = g.scan("Run the migration, then restart the worker and check the logs.");
    assert!(f.iter().all(|x| x.kind != Kind::Person), "{f:?}");
}

#[test]
fn address_without_an_english_street_type() {
    let g = Guard::new();
    for (text, addr) in [
        ("Please send it to Lindenweg 14, 3012 Bern.", "Lindenweg 14"),
        ("She lives at 8 rue des Tanneurs, 69002 Lyon.", "rue des Tanneurs"),
        ("The office is at Via Garibaldi 27, 20121 Milano.", "Via Garibaldi 27"),
        ("Deliver to Kongensgade 41, 5000 Odense C", "Kongensgade 41"),
    ] {
        assert!(finds(&g, text, addr, Kind::Address), "{text}");
    }
}

#[test]
fn address_on_several_lines() {
    let g = Guard::new();
    let text = "Ship the parcel to:\nJonas Berg\nBirkenallee 3\n04109 Leipzig\nGermany";
    for line in ["Birkenallee 3", "04109 Leipzig"] {
        assert!(finds(&g, text, line, Kind::Address), "{line}");
    }
    let us = "Mailing address:\n412 Cedar Hollow\nApt 9\nRiverton, OR 97301";
    assert!(finds(&g, us, "412 Cedar Hollow", Kind::Address));
}

#[test]
fn date_without_a_birth_word() {
    let g = Guard::new();
    for (text, date) in [
        ("The appointment is on 14 March 2025 at 10:30.", "14 March 2025"),
        ("Your hearing moved to 2025-06-03.", "2025-06-03"),
        ("She started on 03/11/2019 and left in May.", "03/11/2019"),
        ("Please confirm the visit on July 4th.", "July 4th"),
    ] {
        assert!(finds(&g, text, date, Kind::Date), "{text}");
    }
}

#[test]
fn organization_names() {
    let g = Guard::new();
    assert!(finds(
        &g,
        "The contract with Larsen Logistics GmbH was signed.",
        "Larsen Logistics GmbH",
        Kind::Organization
    ));
}

#[test]
fn entity_findings_never_overlap_rule_findings() {
    let g = Guard::new();
    let text = "Ship to Marta Keller, Hauptstrasse 12, 8001 Zurich, phone +41 44 668 18 00, mail marta@example.com";
    let f = g.scan(text);
    for (i, a) in f.iter().enumerate() {
        for b in &f[i + 1..] {
            assert!(a.span.end <= b.span.start || b.span.end <= a.span.start, "{f:?}");
        }
    }
    assert!(f.iter().any(|x| x.kind == Kind::Phone) && f.iter().any(|x| x.kind == Kind::Email));
}

#[test]
fn entities_are_redacted_and_restored() {
    let g = Guard::new();
    let text = "I want to add Greta Halvorsen as a beneficiary; the meeting is on 14 March 2025.";
    let (red, map) = g.redact_text(text, |k| k.is_entity());
    assert!(red.contains("<PERSON_1>"), "{red}");
    assert!(!red.contains("Halvorsen"), "{red}");
    assert_eq!(map.restore(&red), text);
    let mut r = map.restorer();
    let mut out = String::new();
    for chunk in red.as_bytes().chunks(5) {
        out.push_str(&r.push(std::str::from_utf8(chunk).unwrap_or("")));
    }
    out.push_str(&r.finish());
    assert_eq!(out, text);
}

#[test]
fn verdict_cache_serves_repeated_texts() {
    let g = Guard::new();
    let text = "I want to add Greta Halvorsen as a beneficiary, card 4012 8888 8888 1881.";
    let first = g.scan(text);
    let (_, hits0, misses0) = g.cache_stats();
    let second = g.scan(text);
    let (entries, hits1, misses1) = g.cache_stats();
    assert_eq!(first, second);
    assert_eq!((hits1 - hits0, misses1 - misses0), (1, 0));
    assert!(entries >= 1);
    assert_eq!(g.scan_uncached(text), first);
}

#[test]
fn entity_overlapping_a_structured_value_is_not_a_name() {
    // The recogniser read the words around a key and an e-mail as a person; the rules' findings
    // stand alone, with no "person" fragments ("key", "mail") left beside them.
    let g = Guard::new();
    let found: Vec<Kind> =
        g.scan_uncached("key AKIAQ3ZJ7V2KXWHD4TBM, mail dana.quill@corp-mail.net").iter().map(|f| f.kind).collect();
    assert_eq!(found, [Kind::AwsAccessKey, Kind::Email]);
}

/// Entity kinds found in `text` (rules' kinds left out).
fn entity_kinds(g: &Guard, text: &str) -> Vec<(Kind, String)> {
    g.scan_uncached(text)
        .iter()
        .filter(|f| f.kind.is_entity())
        .map(|f| (f.kind, text[f.span.clone()].to_owned()))
        .collect()
}

#[test]
fn lower_case_filler_words_are_not_names() {
    // Gateway false alarms: filler text and test prompts in lower case were tagged as persons.
    let g = Guard::new();
    for text in [
        "lorem ipsum dolor sit amet lorem ipsum dolor sit amet",
        "line one\nline two",
        "alpha beta gamma delta alpha beta gamma delta",
        &"lorem ".repeat(94),
    ] {
        assert_eq!(entity_kinds(&g, text), [], "{text:?}");
    }
    // A lower-case name of known first and last names is still found.
    assert!(finds(&g, "I want to add aksel kristensen as a beneficiary", "aksel kristensen", Kind::Person));
}

#[test]
fn harness_boilerplate_product_names_are_not_people() {
    // Claude Code's system prompt and commit trailer name the assistant and its maker.
    let g = Guard::new();
    for text in [
        "You are Claude Code, Anthropic's official CLI for Claude.",
        "Co-Authored-By: Claude <noreply@anthropic.com>",
        "Generated with [Claude Code](https://claude.ai/code)",
        "Ask ChatGPT or Gemini to summarise the OpenAI docs.",
    ] {
        assert_eq!(entity_kinds(&g, text), [], "{text:?}");
    }
    // A person beside them is still found.
    assert!(finds(&g, "Claude, please email Greta Halvorsen the summary.", "Greta Halvorsen", Kind::Person));
}

#[test]
fn place_names_are_not_people_or_organizations() {
    let g = Guard::new();
    for text in ["Weather in Paris and Tokyo?", "Paris 18C, Tokyo 25C.", "What is the weather in Oslo?"] {
        assert_eq!(entity_kinds(&g, text), [], "{text:?}");
    }
    assert!(super::ner::places_sorted());
}

/// Personal-data findings (any kind, rules included) the guard reports in `text`.
fn personal_kinds(g: &Guard, text: &str) -> Vec<(Kind, String)> {
    g.scan(text).into_iter().filter(|f| !f.kind.is_secret()).map(|f| (f.kind, text[f.span].to_owned())).collect()
}

#[test]
fn one_capitalised_word_after_a_personal_data_line_is_not_an_address() {
    let g = Guard::new();
    let text = "Co-Authored-By: Claude <noreply@anthropic.com>\nServers in examples use 203.0.113.5 and 198.51.100.7; mail goes to you@example.com.";
    assert_eq!(personal_kinds(&g, text), vec![]);
}

#[test]
fn headings_and_list_items_are_not_addresses() {
    let g = Guard::new();
    for text in [
        "# Usage\nRun the tests.\nBuild Steps\n- Install deps",
        "1. Run a git status command.\n2. Analyze all staged changes and draft a commit message.\n3. End the message with a trailer.",
        "Summary\n- Fixed the parser in src/lib.rs\n- Added Unit Tests\n\nNext Steps\n- Run the Integration Tests",
    ] {
        assert_eq!(personal_kinds(&g, text), vec![], "{text}");
    }
}

#[test]
fn versions_commit_ids_and_environment_lines_are_not_addresses_or_dates() {
    let g = Guard::new();
    for text in [
        "<env>\nWorking directory: /home/user/proj\nIs directory a git repo: Yes\nPlatform: linux\nOS Version: Linux 6.8.0-45-generic\nToday's date: 2026-12-07\n</env>",
        "Recent commits:\n7cf520a Remove dead code\nd444936 Merge pull request #412 from feature/cache\n5795046 Update CHANGELOG for 2.3.0",
        "Today's date is Monday, December 7, 2026. Assistant knowledge cutoff is January 2025.",
        "## [2.3.0] - 2026-01-14\n### Fixed\n- Crash on empty config files",
        "total 48\ndrwxr-xr-x  8 root root 4096 Dec  7 09:12 .\n-rw-r--r--  1 root root 1067 Dec  7 09:12 Cargo.toml",
    ] {
        assert_eq!(personal_kinds(&g, text), vec![], "{text}");
    }
}

#[test]
fn identifiers_and_technical_values_are_not_names() {
    let g = Guard::new();
    for text in [
        "use std::collections::HashMap;\nlet m: HashMap<String, u32> = HashMap::new();",
        "fn handle_request(req: Request) -> Response {\n    todo()\n}",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: search-api",
        "You can specify an optional timeout in milliseconds (up to 600000ms / 10 minutes).",
    ] {
        assert_eq!(personal_kinds(&g, text), vec![], "{text}");
    }
}

#[test]
fn addresses_split_into_parts_are_judged_as_a_block() {
    let g = Guard::new();
    for (text, part) in [
        ("The bus drops you off at 07576 Magasinsgatan 7 St.", "Magasinsgatan"),
        ("Rebecca Hides\n\n07960 Aqqusinersuaq 111\n Suite 201\n Sisimiut\n Greenland 26364", "Aqqusinersuaq"),
        ("meet me at 2407 tawastintie 6, sé, portugal", "tawastintie"),
    ] {
        assert!(finds(&g, text, part, Kind::Address), "{text}: {:?}", personal_kinds(&g, text));
    }
}
