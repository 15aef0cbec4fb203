//! Property tests of the guard: the detector never panics and reports valid spans on arbitrary
//! UTF-8; redacting then restoring is the identity; restoring through any chunking of a stream
//! equals restoring the whole text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::OnceLock;

use proptest::prelude::*;
use triage_core::guard::Guard;

fn guard() -> &'static Guard {
    static G: OnceLock<Guard> = OnceLock::new();
    G.get_or_init(Guard::new)
}

/// Text that mixes arbitrary Unicode with fragments that trigger rules and placeholder syntax,
/// so that findings, placeholders and near-placeholders actually occur.
fn text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        any::<String>(),
        Just("jane.doe@example.com".to_owned()),
        Just("4012 8888 8888 1881".to_owned()),
        Just("GB82WEST12345698765432".to_owned()),
        Just("078-05-1123 SSN".to_owned()),
        Just("10.1.2.3".to_owned()),
        Just("2001:db8::1".to_owned()),
        Just("+41 44 668 18 00".to_owned()),
        Just("password = \"hunter2hunter2\"".to_owned()),
        Just("api_key: 9fQ2xL7pKd81ZmW3vT0aYb".to_owned()),
        Just("<EMAIL_1>".to_owned()),
        Just("<EMAIL_".to_owned()),
        Just("<".to_owned()),
        Just(">".to_owned()),
        Just("é漢🙂".to_owned()),
        "[a-zA-Z0-9 @.:/_<>-]{0,40}",
    ];
    prop::collection::vec(fragment, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn guard_scan_never_panics_and_spans_are_valid(s in text()) {
        let found = guard().scan(&s);
        let mut last_end = 0;
        for f in &found {
            prop_assert!(f.span.start < f.span.end && f.span.end <= s.len());
            prop_assert!(s.is_char_boundary(f.span.start) && s.is_char_boundary(f.span.end));
            prop_assert!(f.span.start >= last_end, "overlapping findings");
            prop_assert!((0.0..=1.0).contains(&f.confidence));
            last_end = f.span.end;
        }
    }

    #[test]
    fn guard_scan_never_panics_on_any_string(s in any::<String>()) {
        let _ = guard().scan(&s);
    }

    #[test]
    fn guard_redact_then_restore_is_identity(s in text()) {
        let (red, r) = guard().redact_text(&s, |_| true);
        prop_assert_eq!(r.restore(&red), s.clone());
        // Restoring text that was never redacted leaves it unchanged unless it holds one of
        // this redaction's placeholders, which redaction never hands out if present in `s`.
        prop_assert_eq!(r.restore(&s), s);
    }

    #[test]
    fn guard_streaming_restore_equals_whole_restore(s in text(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let (red, r) = guard().redact_text(&s, |_| true);
        // Also stream text the model might write: placeholders next to arbitrary text.
        let answer = format!("{red} <{red}");
        let whole = r.restore(&answer);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(answer.len() + 1)).filter(|&p| answer.is_char_boundary(p)).collect();
        points.sort_unstable();
        points.dedup();
        let mut restorer = r.restorer();
        let mut out = String::new();
        let mut prev = 0;
        for p in points {
            out.push_str(&restorer.push(&answer[prev..p]));
            prev = p;
        }
        out.push_str(&restorer.push(&answer[prev..]));
        out.push_str(&restorer.finish());
        prop_assert_eq!(out, whole);
    }
}
