//! Unit tests of the guard: one positive and one negative case per family, redaction and the
//! streaming restorer. The labelled-data evaluation is `tests/guard_eval.rs`.

use super::*;
use crate::openai::ChatRequest;

fn kinds(text: &str) -> Vec<Kind> {
    Guard::new().scan(text).into_iter().map(|f| f.kind).collect()
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
    let f = Guard::new().scan(text);
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
    let g = Guard::new();
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
    let g = Guard::new();
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
    let g = Guard::new();
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
    let g = Guard::new();
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
    println!("no rules: {:?}", time(&Guard::from_rules(Vec::new())));
    for spec in rules::specs() {
        let one = Guard::from_rules(vec![rules::compile(&spec).unwrap_or_else(|e| panic!("{e}"))]);
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
    let g = Guard::new();
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
