//! Fault injection against scripted upstreams on 127.0.0.1: retries, fallbacks, `Retry-After`,
//! typed fallbacks, stream fail-over before the first token, and the circuit breaker
//! (shared cases C23, C24, C25 F, C32 V3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;

const REQ: &str = r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_REQ: &str = r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn backup_completion() -> String {
    COMPLETION.replace("\"hello\"", "\"from backup\"").replace("gpt-test-upstream", "backup-upstream")
}

fn backup_stream() -> String {
    chunk_line("b", r#"{"role":"assistant","content":"from "}"#, None)
        + &chunk_line("b", r#"{"content":"backup"}"#, Some("stop"))
        + "data: [DONE]\n\n"
}

/// `openai-model` on `primary`, `backup-model` on `backup`; `fallback_line` goes into
/// openai-model's entry (e.g. `fallback = ["backup-model"]`).
fn config(primary: &str, backup: &str, fallback_line: &str, extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]
[retry]
num_retries = 2
initial_backoff_ms = 10
max_backoff_ms = 50
max_retry_wait_ms = 10000
[breaker]
consecutive_failures = 3
cooldown_ms = 1000
[providers.primary]
kind = "openai"
base_url = "{primary}"
first_byte_timeout_ms = 2000
idle_timeout_ms = 2000
[providers.backup]
kind = "openai"
base_url = "{backup}"
[[models]]
id = "openai-model"
provider = "primary"
upstream_model = "gpt-test-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 128000
capabilities = ["tools"]
{fallback_line}
[[models]]
id = "backup-model"
provider = "backup"
upstream_model = "backup-upstream"
tier = "frontier"
price = {{ input = 2.0, output = 6.0 }}
context_window = 256000
capabilities = ["tools"]
{extra}
"#
    )
}

async fn pair(primary: Reply, backup: Reply, fallback_line: &str) -> (FakeUpstream, FakeUpstream, Gateway) {
    let p = FakeUpstream::replay(primary).await;
    let b = FakeUpstream::replay(backup).await;
    let gw = start(&config(&p.url(), &b.url(), fallback_line, "")).await;
    (p, b, gw)
}

const FALLBACK: &str = r#"fallback = ["backup-model"]"#;

/// Shared case C32 V3 (by model id): a 500 is retried, then the fallback answers.
#[tokio::test]
async fn server_errors_are_retried_then_fall_back() {
    let (p, b, gw) = pair(
        Reply::json(500, r#"{"error":{"message":"upstream boom","type":"server_error"}}"#),
        Reply::json(200, &backup_completion()),
        FALLBACK,
    )
    .await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-triage-model"], "backup-model");
    assert_eq!(h["x-triage-tier"], "frontier");
    assert_eq!(
        h["x-triage-attempts"],
        "openai-model@primary:500, openai-model@primary:500, openai-model@primary:500, backup-model@backup:200"
    );
    assert!(h["x-triage-route-reason"]
        .to_str()
        .unwrap()
        .ends_with("; served by backup-model after 3 failed attempt(s)"));
    assert_eq!(json_body(resp).await["choices"][0]["message"]["content"], "from backup");
    assert_eq!((p.calls(), b.calls()), (3, 1));
    assert_eq!(b.requests()[0].json()["model"], "backup-upstream");
}

#[tokio::test]
async fn a_transient_503_is_retried_on_the_same_deployment() {
    let p =
        FakeUpstream::start(|_, n| if n == 0 { Reply::json(503, "{}") } else { Reply::json(200, COMPLETION) }).await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let gw = start(&config(&p.url(), &b.url(), FALLBACK, "")).await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "openai-model");
    assert_eq!((p.calls(), b.calls()), (2, 0));
}

#[tokio::test]
async fn auth_errors_fall_back_without_retry_and_bad_requests_do_neither() {
    let (p, b, gw) =
        pair(Reply::json(401, r#"{"error":{"message":"bad key"}}"#), Reply::json(200, &backup_completion()), FALLBACK)
            .await;
    assert_eq!(post(&gw, REQ).await.status(), 200);
    assert_eq!((p.calls(), b.calls()), (1, 1));

    let (p, b, gw) = pair(
        Reply::json(400, r#"{"error":{"message":"messages[0] is malformed"}}"#),
        Reply::json(200, &backup_completion()),
        FALLBACK,
    )
    .await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-triage-attempts"], "openai-model@primary:400");
    assert_eq!((p.calls(), b.calls()), (1, 0));
}

const RATE_LIMITED: &str = r#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#;

/// Shared case C24 Config 1: a 429 with `retry-after: 20` moves to the fallback at once, and the
/// primary is skipped for the next 20 s.
#[tokio::test]
async fn c24_rate_limited_primary_is_skipped_while_it_cools_down() {
    let (p, b, gw) = pair(
        Reply::json(429, RATE_LIMITED).header("retry-after", "20"),
        Reply::json(200, &backup_completion()),
        FALLBACK,
    )
    .await;
    let t = Instant::now();
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1), "no sleeping: {:?}", t.elapsed());
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-attempts"], "openai-model@primary:cooling_down, backup-model@backup:200");
    assert_eq!((p.calls(), b.calls()), (1, 2));
}

/// Shared case C24 Config 2 and 4: with no fallback and a wait over `max_retry_wait_ms`, the
/// client gets the 429 at once with its `retry-after`; then the gateway's own 429 says how long.
#[tokio::test]
async fn c24_long_retry_after_without_fallback_goes_back_to_the_client() {
    let in_20s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(20));
    for header in ["20".to_owned(), in_20s] {
        let (p, _b, gw) =
            pair(Reply::json(429, RATE_LIMITED).header("retry-after", &header), Reply::json(200, "{}"), "").await;
        let t = Instant::now();
        let resp = post(&gw, REQ).await;
        assert_eq!(resp.status(), 429);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(resp.headers()["retry-after"].to_str().unwrap(), header);
        assert_eq!(json_body(resp).await["error"]["type"], "rate_limit_error");
        assert_eq!(p.calls(), 1, "no early retries");

        let resp = post(&gw, REQ).await;
        assert_eq!(resp.status(), 429);
        let ra: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((18..=20).contains(&ra), "retry-after {ra}");
        let v = json_body(resp).await;
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(p.calls(), 1, "a cooling deployment is not called");
    }
}

/// Shared case C24 Config 3: `retry-after: 1` is waited out, then the retry succeeds.
#[tokio::test]
async fn c24_short_retry_after_is_waited_out() {
    let p = FakeUpstream::start(|_, n| {
        if n == 0 {
            Reply::json(429, RATE_LIMITED).header("retry-after", "1")
        } else {
            Reply::json(200, COMPLETION)
        }
    })
    .await;
    let b = FakeUpstream::replay(Reply::json(200, "{}")).await;
    let gw = start(&config(&p.url(), &b.url(), "", "")).await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 200);
    let r = p.requests();
    assert_eq!(r.len(), 2);
    let gap = r[1].at - r[0].at;
    assert!(gap >= Duration::from_millis(1000) && gap < Duration::from_millis(1500), "gap {gap:?}");
}

#[tokio::test]
async fn retry_after_ms_is_honoured() {
    let p = FakeUpstream::start(|_, n| {
        if n == 0 {
            Reply::json(503, "{}").header("retry-after-ms", "300")
        } else {
            Reply::json(200, COMPLETION)
        }
    })
    .await;
    let b = FakeUpstream::replay(Reply::json(200, "{}")).await;
    let gw = start(&config(&p.url(), &b.url(), "", "")).await;
    assert_eq!(post(&gw, REQ).await.status(), 200);
    let r = p.requests();
    let gap = r[1].at - r[0].at;
    assert!(gap >= Duration::from_millis(300), "gap {gap:?}");
}

#[tokio::test]
async fn retries_never_exceed_num_retries() {
    let (p, _b, gw) = pair(Reply::json(503, "{}"), Reply::json(200, "{}"), "").await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(p.calls(), 3);
}

#[tokio::test]
async fn context_length_errors_use_the_context_window_fallback() {
    let err = r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
    let (p, b, gw) = pair(
        Reply::json(400, err),
        Reply::json(200, &backup_completion()),
        r#"context_window_fallback = ["backup-model"]"#,
    )
    .await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-attempts"], "openai-model@primary:400, backup-model@backup:200");
    assert_eq!((p.calls(), b.calls()), (1, 1));
}

const FILTERED_400: &str = r#"{"error": {"message": "The response was filtered due to the prompt triggering the content management policy.", "type": null, "param": "prompt", "code": "content_filter", "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {"hate": {"filtered": true, "severity": "high"}, "violence": {"filtered": false, "severity": "safe"}}}}}"#;

/// Shared case C23 S: a streamed request's content-policy 400 uses the content-policy fallback.
#[tokio::test]
async fn c23_streamed_content_policy_error_falls_back() {
    let (p, b, gw) = pair(
        Reply::json(400, FILTERED_400),
        Reply::sse(&backup_stream()),
        r#"content_policy_fallback = ["backup-model"]"#,
    )
    .await;
    let resp = post(&gw, STREAM_REQ).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(content(&chunks(&data)), "from backup");
    assert_eq!((p.calls(), b.calls()), (1, 1));
}

/// Shared case C23 N and the documented policy: without `content_policy_fallback`, the 400 goes
/// back to the client with the provider's details, and generic fallbacks are not used for it.
#[tokio::test]
async fn c23_content_policy_error_without_policy_fallback_is_relayed() {
    let (p, b, gw) = pair(Reply::json(400, FILTERED_400), Reply::json(200, &backup_completion()), FALLBACK).await;
    let resp = post(&gw, STREAM_REQ).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "content_filter");
    assert_eq!(v["error"]["innererror"]["code"], "ResponsibleAIPolicyViolation");
    assert_eq!((p.calls(), b.calls()), (1, 0));
}

/// Shared case C23 F: a 200 with `finish_reason: "content_filter"` and no content is a refusal.
#[tokio::test]
async fn c23_content_filter_finish_counts_as_a_policy_failure() {
    let refused = r#"{"id": "chatcmpl-PLACEHOLDER", "object": "chat.completion", "created": 1700000000, "model": "gpt-test-upstream", "choices": [{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "content_filter"}], "usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}}"#;
    let (_p, b, gw) = pair(
        Reply::json(200, refused),
        Reply::json(200, &backup_completion()),
        r#"content_policy_fallback = ["backup-model"]"#,
    )
    .await;
    let v = json_body(post(&gw, REQ).await).await;
    assert_eq!(v["choices"][0]["message"]["content"], "from backup");
    assert_eq!(b.calls(), 1);
    // Without a content-policy fallback, the refusal itself is the answer.
    let (_p, _b, gw) = pair(Reply::json(200, refused), Reply::json(200, &backup_completion()), "").await;
    let v = json_body(post(&gw, REQ).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
}

/// A stream that breaks before its first content token is failed over without the client
/// seeing anything of it: one role, one answer, one `[DONE]`.
#[tokio::test]
async fn stream_failing_before_first_token_fails_over_transparently() {
    let broken =
        vec![Step::Write(chunk_line("x", r#"{"role":"assistant","content":""}"#, None).into_bytes()), Step::Reset];
    for primary in [
        Reply::steps(200, broken.clone()),
        Reply::sse(
            &(chunk_line("x", r#"{"role":"assistant"}"#, None) + "data: {\"error\":{\"message\":\"overloaded\"}}\n\n"),
        ),
        Reply::sse(&chunk_line("x", r#"{"role":"assistant","content":""}"#, None)),
    ] {
        let p = FakeUpstream::replay(primary).await;
        let b = FakeUpstream::replay(Reply::sse(&backup_stream())).await;
        let toml = config(&p.url(), &b.url(), FALLBACK, "").replace("num_retries = 2", "num_retries = 0");
        let gw = start(&toml).await;
        let resp = post(&gw, STREAM_REQ).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-triage-model"], "backup-model");
        let body = resp.text().await.unwrap();
        let data = sse_data(&body);
        let c = chunks(&data);
        assert_eq!(content(&c), "from backup");
        assert_eq!(c.iter().filter(|c| c["choices"][0]["delta"]["role"] == "assistant").count(), 1);
        assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
        assert!(!body.contains("error"));
    }
}

/// Shared case C25 F with a fallback: no first byte within 2 s, then the backup answers.
#[tokio::test]
async fn c25_silent_upstream_falls_back_after_the_first_byte_timeout() {
    let p = FakeUpstream::replay(Reply::silence(Duration::from_secs(10))).await;
    let b = FakeUpstream::replay(Reply::sse(&backup_stream())).await;
    let toml = config(&p.url(), &b.url(), FALLBACK, "").replace("num_retries = 2", "num_retries = 0");
    let gw = start(&toml).await;
    let t = Instant::now();
    let resp = post(&gw, STREAM_REQ).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(content(&chunks(&sse_data(&resp.text().await.unwrap()))), "from backup");
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_millis(3000), "{took:?}");
}

#[tokio::test]
async fn an_unreachable_primary_is_skipped() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let gw = start(&config(&format!("http://127.0.0.1:{port}/v1"), &b.url(), FALLBACK, "")).await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 200);
    let attempts = resp.headers()["x-triage-attempts"].to_str().unwrap().to_owned();
    // Either the probe already marked it down, or the call found the port closed.
    assert!(
        attempts == "openai-model@primary:unreachable, backup-model@backup:200"
            || attempts.starts_with("openai-model@primary:connect"),
        "{attempts}"
    );
}

/// The breaker opens after 3 failures in a row, skips the deployment, lets one probe through
/// after the cooldown, and closes when the probe succeeds.
#[tokio::test]
async fn breaker_opens_probes_and_closes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let p = FakeUpstream::start(move |_, _| {
        if h.load(Ordering::SeqCst) {
            Reply::json(200, COMPLETION)
        } else {
            Reply::json(500, "{}")
        }
    })
    .await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let toml = config(&p.url(), &b.url(), FALLBACK, "").replace("num_retries = 2", "num_retries = 0");
    let gw = start(&toml).await;
    for _ in 0..3 {
        assert_eq!(post(&gw, REQ).await.status(), 200);
    }
    assert_eq!(p.calls(), 3);
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.headers()["x-triage-attempts"], "openai-model@primary:breaker_open, backup-model@backup:200");
    assert_eq!(p.calls(), 3);
    let health = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    let primary = &health["deployments"][0];
    assert_eq!((primary["breaker"].as_str(), primary["reason"].as_str()), (Some("open"), Some("breaker_open")));
    assert_eq!(primary["failures"], 3);
    assert_eq!(health["deployments"][1]["breaker"], "closed");

    // The cooldown is jittered to 0.8–1.2 × cooldown_ms (1 s here): wait past its upper end.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    healthy.store(true, Ordering::SeqCst);
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.headers()["x-triage-model"], "openai-model", "the half-open probe succeeds");
    let health = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    assert_eq!(health["deployments"][0]["breaker"], "closed");
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("triage_breaker_opened_total"), "{metrics}");
    assert!(metrics.contains("triage_fallbacks_total"));
}

/// Soak: 2,000 requests, 100 at a time, while the primary fails 30 % of calls at random. Every
/// request succeeds, each answered by exactly one successful upstream call, and the breaker
/// opens and later closes. Figures go to docs/RELIABILITY.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_30_percent_primary_failures() {
    const TOTAL: usize = 2000;
    const CONCURRENCY: usize = 100;
    let ok_primary = Arc::new(AtomicUsize::new(0));
    let okp = ok_primary.clone();
    let p = FakeUpstream::start(move |_, _| {
        if fastrand::f64() < 0.3 {
            Reply::json(500, "{}")
        } else {
            okp.fetch_add(1, Ordering::SeqCst);
            Reply::json(200, COMPLETION)
        }
    })
    .await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let toml = config(&p.url(), &b.url(), FALLBACK, "")
        .replace("num_retries = 2", "num_retries = 0")
        .replace("cooldown_ms = 1000", "cooldown_ms = 200");
    let gw = Arc::new(start(&toml).await);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let gw = gw.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut results = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < TOTAL {
                let r = c.post(gw.url("/v1/chat/completions")).body(REQ).send().await.unwrap();
                results.push((r.status().as_u16(), r.headers()["x-triage-model"].to_str().unwrap().to_owned()));
                let _ = r.bytes().await.unwrap();
            }
            results
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    let took = started.elapsed();
    assert_eq!(results.len(), TOTAL);
    assert!(results.iter().all(|(s, _)| *s == 200), "every request succeeds");
    let by_primary = results.iter().filter(|(_, m)| m == "openai-model").count();
    let by_backup = TOTAL - by_primary;
    assert_eq!(by_primary, ok_primary.load(Ordering::SeqCst), "each primary success answered exactly one request");
    assert_eq!(by_backup, b.calls(), "each backup call answered exactly one request");
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let opened: f64 = metrics
        .lines()
        .find(|l| l.starts_with("triage_breaker_opened_total{") && l.contains("openai-model"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(opened >= 1.0, "the breaker opened");
    // After the cooldown, a successful probe closes it.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _ = post(&gw, REQ).await;
        let h = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
        if h["deployments"][0]["breaker"] == "closed" {
            break;
        }
        assert!(Instant::now() < deadline, "breaker never closed: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "soak: {TOTAL} requests, {CONCURRENCY} concurrent, in {:.2} s ({:.0} req/s); primary calls {}, answered by primary {by_primary}, by backup {by_backup}; breaker opened {opened} times",
        took.as_secs_f64(),
        TOTAL as f64 / took.as_secs_f64(),
        p.calls(),
    );
}
