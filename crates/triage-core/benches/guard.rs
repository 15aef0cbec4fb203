//! Criterion benchmarks of the sensitive-content guard on a ~2,000-token (~8 KB) chat request:
//! clean (no findings), and the same request with a few secrets and personal data in it; the
//! rules alone (`*_rules`), rules and entity recogniser without the verdict cache (`*_uncached`),
//! the same request resent (`*_cached`: the verdict cache's hit path), and a new ~500-token
//! message with names, addresses and dates (`new_message_500_tokens`, recogniser alone:
//! `recognizer_500_tokens`).
//!
//! Run: `cargo bench -p triage-core --bench guard -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use triage_core::guard::{ner, Guard, Kind};
use triage_core::openai::ChatRequest;

/// Ordinary engineering prose and code with numbers, versions, dates, paths and identifiers,
/// but no personal data or secrets.
const SENTENCES: &[&str] = &[
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

fn clean_text(target_bytes: usize) -> String {
    let mut out = String::with_capacity(target_bytes + 256);
    let mut i = 0usize;
    while out.len() < target_bytes {
        out.push_str(SENTENCES[i % SENTENCES.len()]);
        out.push(if i % 4 == 3 { '\n' } else { ' ' });
        i += 1;
    }
    out
}

/// A new ~500-token message with generated names, addresses, dates and organisations.
fn new_message() -> String {
    const PARTS: &[&str] = &[
        "Hi team, I want to add Marta Keller as a beneficiary on the account and remove Jonas Berg.",
        "Her address is Hauptstrasse 12, 8001 Zurich, and the appointment is on 14 March 2025 at 10:30.",
        "The contract with Larsen Logistics GmbH was signed on 2024-11-02 by Hiro Sato.",
        "Please ship the documents to:\n27 Maple Court\nRiverton, NY 10012\nUnited States",
        "Can you summarise the attached notes and draft a short reply to Ines Moreau about the delay?",
        "We discussed the retry policy, the cache size and the budget for the next quarter in detail.",
    ];
    let mut out = String::new();
    let mut i = 0;
    while out.len() < 2_300 {
        out.push_str(PARTS[i % PARTS.len()]);
        out.push(' ');
        i += 1;
    }
    out
}

fn request(user_text: &str) -> ChatRequest {
    let body = serde_json::json!({
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are a careful senior engineer. Answer concisely."},
            {"role": "user", "content": user_text}
        ]
    });
    serde_json::from_value(body).unwrap()
}

fn bench(c: &mut Criterion) {
    let guard = Guard::rules_only().without_cache();
    let full = Guard::new().without_cache();
    let cached = Guard::new();
    let clean = clean_text(8 * 1024);
    let clean_req = request(&clean);
    let found: Vec<String> =
        guard.scan(&clean).iter().map(|f| format!("{} {:?}", f.rule, &clean[f.span.clone()])).collect();
    assert!(found.is_empty(), "the clean request must have no findings: {found:?}");

    let mut dirty = clean.clone();
    let insert = [
        " Contact jane.doe@example.com or +41 44 668 18 00. ",
        " The card 4012 8888 8888 1881 was charged. ",
        // A keyboard-row placeholder, split so that no key-shaped string sits in the repository.
        concat!(" export AWS_ACCESS_KEY_ID=AKIA", "QWERTYUIOPASDFGH "),
        " DATABASE_URL=postgres://app:s3cr3tP4ss@db.internal:5432/app ",
        " token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8 ",
    ];
    for (n, s) in insert.iter().enumerate() {
        let at = dirty.len() * (n + 1) / (insert.len() + 1);
        let at = (at..dirty.len())
            .find(|&i| dirty.is_char_boundary(i) && dirty.as_bytes()[i] == b' ')
            .unwrap_or(dirty.len());
        dirty.insert_str(at, s);
    }
    let dirty_req = request(&dirty);
    assert!(guard.scan_request(&dirty_req).len() >= 5);

    let mut g = c.benchmark_group("guard");
    g.bench_function("scan_request_clean_8KB_rules", |b| {
        b.iter(|| black_box(guard.scan_request(black_box(&clean_req))))
    });
    g.bench_function("scan_request_clean_8KB_uncached", |b| {
        b.iter(|| black_box(full.scan_request(black_box(&clean_req))))
    });
    let _ = cached.scan_request(&clean_req);
    g.bench_function("scan_request_clean_8KB_cached", |b| {
        b.iter(|| black_box(cached.scan_request(black_box(&clean_req))))
    });
    let message = new_message();
    let tokens = triage_core::tokens::count_text(&message);
    assert!((450..=600).contains(&tokens), "{tokens} tokens");
    g.bench_function("new_message_500_tokens", |b| b.iter(|| black_box(full.scan(black_box(&message)))));
    if let Some(model) = ner::Model::builtin() {
        g.bench_function("recognizer_500_tokens", |b| b.iter(|| black_box(model.find(black_box(&message)))));
    }
    // Linearity: the same clean text at four times the size.
    let clean_32k = request(&clean_text(32 * 1024));
    g.bench_function("scan_request_clean_32KB", |b| b.iter(|| black_box(guard.scan_request(black_box(&clean_32k)))));
    g.bench_function("scan_request_findings_8KB", |b| b.iter(|| black_box(guard.scan_request(black_box(&dirty_req)))));
    g.bench_function("redact_request_findings_8KB", |b| {
        b.iter(|| {
            let mut r = dirty_req.clone();
            black_box(guard.redact_request(&mut r, |k: Kind| k.is_secret() || k == Kind::Email))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
