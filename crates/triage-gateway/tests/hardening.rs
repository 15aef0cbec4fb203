//! Hostile clients and failing upstreams against the real server (issue 18, items 4, 5 and 6):
//! unauthenticated floods on every endpoint, bodies that are too big or never come, counts of
//! huge prompts beside a liveness probe, revoked keys, slowloris connections, request-smuggling
//! framings, and both deployments of a model failing at once.
//! Runs against SQLite, and PostgreSQL too when `TRIAGE_TEST_POSTGRES_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use triage_store::{NewKey, Store};

fn databases() -> Vec<String> {
    let mut v = vec![temp_db()];
    if let Ok(pg) = std::env::var("TRIAGE_TEST_POSTGRES_URL") {
        v.push(pg);
    }
    v
}

/// `one_model` with `auth = "keys"` on database `db`, and `server` lines added to `[server]`.
fn keyed(url: &str, db: &str, server: &str, extra: &str) -> String {
    let base = one_model(url, extra).replace("[server]\n", &format!("[server]\n{server}\n"));
    format!("auth = \"keys\"\n{base}\n[spend]\ndatabase = \"{db}\"\n")
}

const ALL_ADMIN: &str = "[server.access]\n\"/v1/messages/count_tokens\" = \"admin\"\n\"/v1/models\" = \"admin\"\n\"/readyz\" = \"admin\"\n\"/metrics\" = \"admin\"\n\"/v1/health/deployments\" = \"admin\"\n";

/// Every route: (method, path, body).
const ROUTES: [(&str, &str, &str); 13] = [
    ("POST", "/v1/chat/completions", r#"{"model":"auto","messages":[{"role":"user","content":"x"}]}"#),
    ("POST", "/chat/completions", r#"{"model":"auto","messages":[{"role":"user","content":"x"}]}"#),
    ("POST", "/v1/messages", r#"{"model":"auto","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#),
    ("POST", "/v1/messages/count_tokens", r#"{"model":"auto","messages":[{"role":"user","content":"x"}]}"#),
    ("POST", "/v1/feedback", r#"{"request_id":"r","score":1}"#),
    ("GET", "/v1/models", ""),
    ("GET", "/models", ""),
    ("GET", "/v1/spend", ""),
    ("GET", "/v1/evals", ""),
    ("GET", "/readyz", ""),
    ("GET", "/metrics", ""),
    ("GET", "/v1/health/deployments", ""),
    ("GET", "/healthz", ""),
];

async fn call(gw: &Gateway, method: &str, path: &str, body: &str, key: Option<&str>) -> u16 {
    let c = client();
    let mut req = if method == "POST" {
        c.post(gw.url(path)).header("content-type", "application/json").body(body.to_owned())
    } else {
        c.get(gw.url(path))
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap().status().as_u16()
}

/// With `auth = "keys"` and the operational endpoints set to `admin`, a flood without a key gets
/// 401 on every endpoint but `/healthz`, and no upstream is ever called; a non-admin key gets
/// 403 on the admin ones. Regression: count_tokens, /metrics, /readyz and
/// /v1/health/deployments answered anyone.
#[tokio::test]
async fn an_unauthenticated_flood_gets_401_on_every_endpoint() {
    for db in databases() {
        let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
        let store = Store::connect(&db).await.unwrap();
        let (_, user) =
            store.create_key(&NewKey { user: "u".into(), team: "t".into(), ..Default::default() }).await.unwrap();
        let gw = start(&keyed(&up.url(), &db, "", ALL_ADMIN)).await;
        let started = Instant::now();
        let mut sent = 0;
        let gw = &gw;
        for round in 0..10 {
            let mut tasks = Vec::new();
            for (method, path, body) in ROUTES {
                tasks.push(async move { (path, call(gw, method, path, body, None).await) });
            }
            for (path, status) in futures_util::future::join_all(tasks).await {
                sent += 1;
                let want = if path == "/healthz" { 200 } else { 401 };
                assert_eq!(status, want, "round {round}: {path} without a key ({db})");
            }
            // A key that is not a key is no better.
            for (method, path, body) in ROUTES.iter().filter(|r| r.1 != "/healthz") {
                assert_eq!(call(gw, method, path, body, Some("tk-not-a-key")).await, 401, "{path}");
                sent += 1;
            }
        }
        eprintln!("flood ({db}): {sent} requests without a valid key answered in {:?}", started.elapsed());
        assert_eq!(up.calls(), 0, "no upstream call without a key");
        for path in ["/readyz", "/metrics", "/v1/health/deployments", "/v1/models", "/v1/spend", "/v1/evals"] {
            assert_eq!(call(gw, "GET", path, "", Some(&user)).await, 403, "{path} with a non-admin key");
        }
        let body = ROUTES[3].2;
        assert_eq!(call(gw, "POST", "/v1/messages/count_tokens", body, Some(&user)).await, 403);
    }
}

/// The defaults with `auth = "keys"`: count_tokens and /v1/models need a key (any), the
/// operational endpoints stay open for probes and scrapers unless configured otherwise.
#[tokio::test]
async fn by_default_count_tokens_needs_a_key_and_probes_stay_open() {
    let db = temp_db();
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let store = Store::connect(&db).await.unwrap();
    let (_, user) =
        store.create_key(&NewKey { user: "u".into(), team: "t".into(), ..Default::default() }).await.unwrap();
    let gw = start(&keyed(&up.url(), &db, "", "")).await;
    let body = ROUTES[3].2;
    assert_eq!(call(&gw, "POST", "/v1/messages/count_tokens", body, None).await, 401);
    assert_eq!(call(&gw, "POST", "/v1/messages/count_tokens", body, Some(&user)).await, 200);
    assert_eq!(call(&gw, "GET", "/v1/models", "", None).await, 401);
    assert_eq!(call(&gw, "GET", "/v1/models", "", Some(&user)).await, 200);
    for path in ["/readyz", "/metrics", "/v1/health/deployments", "/healthz"] {
        assert_eq!(call(&gw, "GET", path, "", None).await, 200, "{path}");
    }
    // Configured public: anyone may count.
    let gw = start(&keyed(&up.url(), &db, "", "[server.access]\n\"/v1/messages/count_tokens\" = \"public\"\n")).await;
    assert_eq!(call(&gw, "POST", "/v1/messages/count_tokens", body, None).await, 200);
}

/// Sends `bytes` on a fresh connection and returns what came back until the server closed the
/// connection or `wait` passed.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The first response's status code in `text`.
fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok())
}

/// A request announcing 8 MB of body without a key is refused before any of it is read.
#[tokio::test]
async fn no_key_is_refused_before_the_body_is_read() {
    let db = temp_db();
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&keyed(&up.url(), &db, "", "")).await;
    for path in ["/v1/messages/count_tokens", "/v1/chat/completions", "/v1/messages"] {
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 8000000\r\n\r\n{{\"model\":");
        let t = Instant::now();
        let text = raw(gw.addr, head.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&text), Some(401), "{path}: {text}");
        eprintln!("{path}: 401 after {:?} with 8 MB announced, 10 bytes sent", t.elapsed());
    }
}

/// A chunked body (no content-length) is cut at `server.max_body_bytes`: 413 in the gateway's
/// envelope, recognised by the limit's typed error.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "").replace("[server]\n", "[server]\nmax_body_bytes = 2048\n")).await;
    let chunk = "x".repeat(1000);
    let mut req = String::from(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let text = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), Some(413), "{text}");
    assert!(text.contains("\"code\":\"request_too_large\""), "{text}");
    assert_eq!(up.calls(), 0);
}

/// Two concurrent 8 MB count_tokens of one long "word" (the most expensive input for BPE) do
/// not stall the gateway: `/healthz` keeps answering while they run, and both get a count.
/// Regression: /healthz took 8.9 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_counts_do_not_stall_healthz() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let word = "a".repeat(8 * 1024 * 1024);
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": word}]}).to_string();
    let started = Instant::now();
    let counts: Vec<_> = (0..2)
        .map(|_| {
            let (url, body) = (gw.url("/v1/messages/count_tokens"), body.clone());
            tokio::spawn(async move {
                let resp =
                    client().post(url).header("content-type", "application/json").body(body).send().await.unwrap();
                let status = resp.status().as_u16();
                let v = json_body(resp).await;
                (status, v["input_tokens"].as_u64(), started.elapsed())
            })
        })
        .collect();
    let mut probes = Vec::new();
    while counts.iter().any(|t| !t.is_finished()) && probes.len() < 200 {
        let t = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(2), client().get(gw.url("/healthz")).send()).await;
        let took = t.elapsed();
        assert!(
            matches!(&resp, Ok(Ok(r)) if r.status() == 200),
            "/healthz did not answer within 2 s while counting ({took:?})"
        );
        probes.push(took);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in counts {
        let (status, tokens, took) = c.await.unwrap();
        assert_eq!(status, 200);
        let tokens = tokens.unwrap();
        // One 8 MiB run of "a": far fewer tokens than bytes, more than none.
        assert!(tokens > 1000 && tokens < 8 * 1024 * 1024, "{tokens}");
        eprintln!("count_tokens of 8 MiB: {tokens} tokens in {took:?}");
    }
    let max = probes.iter().max().copied().unwrap_or_default();
    eprintln!("/healthz during the counts: {} probes, slowest {max:?}", probes.len());
}

/// A key revoked elsewhere (another gateway on the same database, `triage keys revoke`) stops
/// working on every gateway within `server.key_recheck_ms`, not the cache's 30 s.
#[tokio::test]
async fn a_revoked_key_stops_working_on_every_gateway_within_the_recheck() {
    for db in databases() {
        let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
        let store = Store::connect(&db).await.unwrap();
        let (rec, key) =
            store.create_key(&NewKey { user: "r".into(), team: "t".into(), ..Default::default() }).await.unwrap();
        let config = keyed(&up.url(), &db, "key_recheck_ms = 200", "");
        let gws = [start(&config).await, start(&config).await];
        let body = ROUTES[0].2;
        for gw in &gws {
            assert_eq!(call(gw, "POST", "/v1/chat/completions", body, Some(&key)).await, 200);
        }
        let revoked = Instant::now();
        assert!(store.revoke_key(&rec.id).await.unwrap());
        for (i, gw) in gws.iter().enumerate() {
            let mut status = 200;
            for _ in 0..100 {
                status = call(gw, "POST", "/v1/chat/completions", body, Some(&key)).await;
                if status == 401 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(status, 401, "gateway {i} still accepts the revoked key ({db})");
            eprintln!("gateway {i} ({db}): revoked key refused {:?} after the revocation", revoked.elapsed());
        }
        assert!(revoked.elapsed() < Duration::from_secs(5), "{:?}", revoked.elapsed());
    }
}

// ---- Item 6: server timeouts and strict framing ----

/// `one_model` with these `[server]` settings.
fn served(url: &str, server: &str, extra: &str) -> String {
    one_model(url, extra).replace("[server]\n", &format!("[server]\n{server}\n"))
}

/// Waits until the server closes `s` (read returns 0 or an error); returns how long it took,
/// `None` if it stayed open for `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Slowloris: 200 connections that send half a request head, and 50 that send nothing, are all
/// closed after the header-read and idle timeouts; the gateway keeps serving meanwhile.
/// Regression: 1,000 such connections all stayed open ≥ 300 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_timeouts() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&served(&up.url(), "header_read_timeout_ms = 500\nidle_timeout_ms = 1000", "")).await;
    let mut half = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: app").await.unwrap();
        half.push(s);
    }
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // Served meanwhile.
    assert_eq!(
        post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await.status(),
        200
    );
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (i, s) in half.iter_mut().enumerate() {
        let took = closed_within(s, Duration::from_secs(5)).await;
        assert!(took.is_some(), "half-sent head {i} still open after 5 s");
        slowest = slowest.max(started.elapsed());
    }
    eprintln!(
        "200 half-sent heads (header_read_timeout_ms = 500): all closed, the last {slowest:?} after they were sent"
    );
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_within(s, Duration::from_secs(5)).await.is_some(), "silent connection {i} still open after 5 s");
    }
    eprintln!("50 silent connections (idle_timeout_ms = 1000): all closed after {:?}", started.elapsed());
    // A keep-alive connection after a whole exchange closes when idle, too.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), Some(200));
    let idle = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(idle.is_some_and(|d| d >= Duration::from_millis(900)), "{idle:?}");
}

/// A stream that takes longer than every timeout is never cut while data flows.
#[tokio::test]
async fn a_long_stream_outlives_the_timeouts() {
    let mut steps = vec![Step::Write(chunk_line("c1", r#"{"role":"assistant","content":"a"}"#, None).into_bytes())];
    for i in 0..8 {
        steps.push(Step::Sleep(Duration::from_millis(250)));
        steps.push(Step::Write(chunk_line("c1", &format!(r#"{{"content":"{i}"}}"#), None).into_bytes()));
    }
    steps.push(Step::Write(chunk_line("c1", "{}", Some("stop")).into_bytes()));
    steps.push(Step::Write(b"data: [DONE]\n\n".to_vec()));
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let gw = start(&served(
        &up.url(),
        "header_read_timeout_ms = 300\nidle_timeout_ms = 300\nbody_read_timeout_ms = 300",
        "",
    ))
    .await;
    let t = Instant::now();
    let resp = post(&gw, r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_eq!(content(&chunks(&sse_data(&text))), "a01234567");
    assert!(t.elapsed() >= Duration::from_millis(1500), "{:?}", t.elapsed());
}

/// A body that never comes whole gets 408 after `body_read_timeout_ms`.
#[tokio::test]
async fn a_body_that_never_comes_is_408() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&served(&up.url(), "body_read_timeout_ms = 500", "")).await;
    let t = Instant::now();
    let text = raw(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), Some(408), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    eprintln!("408 after {:?}", t.elapsed());
    assert_eq!(up.calls(), 0);
}

/// Request smuggling framings get 400 and a closed connection, and nothing reaches a handler:
/// `Content-Length` with `Transfer-Encoding` (either order), bare-LF line endings, a folded
/// header. Regression: all were accepted.
#[tokio::test]
async fn smuggling_framings_get_400() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let body = r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#;
    let cases = [
        ("CL then TE", format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE then CL", format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len(), body.len())),
        ("bare LF", format!("POST /v1/chat/completions HTTP/1.1\nhost: x\ncontent-length: {}\n\n{body}", body.len())),
        ("one bare LF", format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\ncontent-length: {}\r\n\r\n{body}", body.len())),
        ("bare LF GET", "GET /healthz HTTP/1.1\nhost: x\n\n".to_owned()),
        ("folded header", format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\ncontent-length: {}\r\n\r\n{body}", body.len())),
    ];
    for (name, req) in cases {
        let text = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&text), Some(400), "{name}: {text:?}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{name}: one answer, then closed: {text:?}");
    }
    assert_eq!(up.calls(), 0, "nothing smuggled reached the upstream");
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("triage_http_rejected_total{reason=\"bare_lf\"}"), "{metrics}");
}

/// The framing follower keeps keep-alive and pipelining intact: a chunked request, a
/// content-length request and a GET sent back to back on one connection each get their answer,
/// and a smuggling attempt hidden after them is still refused.
#[tokio::test]
async fn pipelined_requests_keep_their_framing() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let body = r#"{"model":"openai-model","messages":[{"role":"user","content":"hi\n2 + 2?"}]}"#;
    let (a, b) = body.split_at(20);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\ntrailer: t\r\n\r\n\
         POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}\
         GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n\
         GET /healthz HTTP/1.1\nhost: x\n\n",
        a.len(),
        b.len(),
        body.len()
    );
    let text = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    let statuses: Vec<u16> = text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| status_of(&text[i..])).collect();
    assert_eq!(statuses, [200, 200, 200, 400], "{text}");
    assert_eq!(up.calls(), 2);
}

// ---- Item 5: a partial outage stays partial ----

/// Two deployments of one model, `p1` and `p2`, on the two fakes.
fn two_deployments(url1: &str, url2: &str, extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]
[providers.p1]
kind = "openai"
base_url = "{url1}"
[providers.p2]
kind = "openai"
base_url = "{url2}"
[[models]]
id = "m"
provider = "p1"
upstream_model = "up"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 128000
deployments = [{{ provider = "p2", upstream_model = "up" }}]
{extra}
"#
    )
}

/// A fake failing `rate` of its calls, cycling through 500, 503, 502 and 429 with
/// `Retry-After: 1`; counts its successes.
async fn flaky(rate: f64, ok: Arc<AtomicUsize>) -> FakeUpstream {
    FakeUpstream::start(move |_, n| {
        if fastrand::f64() < rate {
            match n % 4 {
                0 => Reply::json(500, "{}"),
                1 => Reply::json(503, "{}"),
                2 => Reply::json(502, "{}"),
                _ => Reply::json(429, r#"{"error":{"message":"Rate limit reached"}}"#).header("retry-after", "1"),
            }
        } else {
            ok.fetch_add(1, Ordering::SeqCst);
            Reply::json(200, COMPLETION)
        }
    })
    .await
}

/// Both deployments of a model fail 30 % of calls (server errors and rate limits with
/// `Retry-After: 1`), with the default breaker and retry settings: at least 99 % of requests are
/// served, each by exactly one upstream success. Regression: 2.9 % served (one 429 took its
/// deployment out for all traffic; both breakers opened together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_deployments_failing_30_percent_still_serve_99_percent() {
    const TOTAL: usize = 600;
    const CONCURRENCY: usize = 30;
    let ok = Arc::new(AtomicUsize::new(0));
    let (u1, u2) = (flaky(0.3, ok.clone()).await, flaky(0.3, ok.clone()).await);
    let gw = Arc::new(start(&two_deployments(&u1.url(), &u2.url(), "")).await);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (gw, next) = (gw.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < TOTAL {
                let r = c
                    .post(gw.url("/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                if status != 200 {
                    eprintln!("{status}: {:?}", r.headers().get("x-triage-attempts"));
                }
                statuses.push(status);
                let _ = r.bytes().await.unwrap();
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    let calls = u1.calls() + u2.calls();
    eprintln!(
        "both deployments failing 30 %: {served}/{TOTAL} served ({:.1} %) in {:?}; {calls} upstream calls; other statuses: {:?}",
        100.0 * served as f64 / TOTAL as f64,
        started.elapsed(),
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert_eq!(statuses.len(), TOTAL);
    assert!(served * 100 >= TOTAL * 99, "only {served}/{TOTAL} served");
    assert_eq!(
        served,
        ok.load(Ordering::SeqCst),
        "each answer is exactly one upstream success: none lost, none duplicated"
    );
}

/// A `Retry-After` cools the deployment for the request that saw it; another request meanwhile,
/// with no other deployment to go to, waits it out and is served instead of getting 429.
#[tokio::test]
async fn a_retry_after_never_removes_the_last_deployment() {
    let up = FakeUpstream::start(|_, n| {
        if n == 0 {
            Reply::json(429, r#"{"error":{"message":"Rate limit reached"}}"#).header("retry-after", "1")
        } else {
            Reply::json(200, COMPLETION)
        }
    })
    .await;
    let gw = start(&one_model(&up.url(), "")).await;
    let req = r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#;
    let first = post(&gw, req);
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        post(&gw, req).await
    };
    let (a, b) = tokio::join!(first, second);
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_eq!(up.calls(), 3);
}

/// An upstream that refuses Triage's provider key (401): the request goes to the other
/// deployment; the refusing one is quarantined for `breaker.auth_quarantine_ms` (shown in
/// /v1/health/deployments), then called again. When every deployment refuses, the client gets
/// 502 `upstream_auth_failed`, not a 401 that would blame its own key.
#[tokio::test]
async fn an_upstream_auth_error_is_reported_and_quarantined_briefly() {
    let bad = FakeUpstream::replay(Reply::json(401, r#"{"error":{"message":"Incorrect API key provided"}}"#)).await;
    let good = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&two_deployments(&bad.url(), &good.url(), "[breaker]\nauth_quarantine_ms = 400\n")).await;
    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = post(&gw, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-attempts"], "m@p1:401, m@p2:200");
    let resp = post(&gw, req).await;
    assert_eq!(resp.headers()["x-triage-attempts"], "m@p1:cooling_down, m@p2:200");
    let h = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    assert_eq!(h["deployments"][0]["upstream_auth_failed"]["status"], 401, "{h}");
    assert_eq!(bad.calls(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(post(&gw, req).await.status(), 200);
    assert_eq!(bad.calls(), 2, "called again after the quarantine");

    let gw = start(&two_deployments(&bad.url(), &bad.url(), "")).await;
    let resp = post(&gw, req).await;
    assert_eq!(resp.status(), 502);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "upstream_auth_failed", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("refused Triage's credentials"), "{v}");
}
