//! Streamed-request client for `bench/compare.sh`: sends exactly `--requests` streamed chat
//! completions (`stream: true`) to `--url` with `--concurrency` in flight, and prints one JSON
//! object with the time to first token (first SSE event whose `choices[0].delta.content` is a
//! non-empty string), the gaps between successive content events, the whole-stream time, and the
//! error count. Bounded: every request has a 30 s timeout and the run stops after `--requests`.
//!
//!   triage-bench-stream --url http://127.0.0.1:19902/v1/chat/completions --model fake-local \
//!       --requests 400 --concurrency 16 [--key BEARER]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

struct One {
    ttft: Option<f64>,
    gaps: Vec<f64>,
    total: f64,
    tokens: usize,
    ok: bool,
}

fn arg(args: &[String], name: &str, default: Option<&str>) -> String {
    match args.iter().position(|a| a == name) {
        Some(i) if i + 1 < args.len() => args[i + 1].clone(),
        _ => default.unwrap_or_else(|| panic!("missing {name}")).to_owned(),
    }
}

fn content_of(event: &str) -> Option<bool> {
    // Some(true): a content token; Some(false): another data event; None: [DONE] or not data.
    let data = event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect::<Vec<_>>().join("");
    if data.is_empty() || data == "[DONE]" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&data).ok()?;
    let c = v.pointer("/choices/0/delta/content").and_then(|c| c.as_str()).unwrap_or("");
    Some(!c.is_empty())
}

async fn one(client: &reqwest::Client, url: &str, key: &str, body: &str) -> One {
    let t0 = Instant::now();
    let mut r = One { ttft: None, gaps: Vec::new(), total: 0.0, tokens: 0, ok: false };
    let resp = match client
        .post(url)
        .header("content-type", "application/json")
        .bearer_auth(key)
        .body(body.to_owned())
        .send()
        .await
    {
        Ok(resp) if resp.status().is_success() => resp,
        _ => return r,
    };
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut last: Option<Instant> = None;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return r };
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        let norm = buf.replace("\r\n", "\n");
        buf = norm;
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("[DONE]") {
                done = true;
            }
            if let Some(true) = content_of(&event) {
                r.tokens += 1;
                match last {
                    None => r.ttft = Some((now - t0).as_secs_f64() * 1000.0),
                    Some(l) => r.gaps.push((now - l).as_secs_f64() * 1000.0),
                }
                last = Some(now);
            }
        }
    }
    r.total = t0.elapsed().as_secs_f64() * 1000.0;
    r.ok = done && r.ttft.is_some();
    r
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url", None);
    let model = arg(&args, "--model", None);
    let key = arg(&args, "--key", Some("unused"));
    let requests: usize = arg(&args, "--requests", Some("200")).parse().unwrap();
    let concurrency: usize = arg(&args, "--concurrency", Some("16")).parse().unwrap();
    let requests = requests.min(100_000);
    let body = serde_json::json!({
        "model": model, "max_tokens": 64, "stream": true,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the meeting notes in three bullet points."}
        ]
    })
    .to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body, next) = (client.clone(), url.clone(), key.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                out.push(one(&client, &url, &key, &body).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = t0.elapsed().as_secs_f64();
    let ok: Vec<&One> = all.iter().filter(|r| r.ok).collect();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft).collect();
    let mut gaps: Vec<f64> = ok.iter().flat_map(|r| r.gaps.iter().copied()).collect();
    let mut total: Vec<f64> = ok.iter().map(|r| r.total).collect();
    let tokens = ok.first().map(|r| r.tokens).unwrap_or(0);
    let out = serde_json::json!({
        "requests": all.len(), "ok": ok.len(), "errors": all.len() - ok.len(),
        "concurrency": concurrency, "wall_s": wall, "req_per_s": all.len() as f64 / wall,
        "tokens_per_stream": tokens,
        "ttft_ms": {"p50": pct(&mut ttft, 50.0), "p90": pct(&mut ttft, 90.0), "p99": pct(&mut ttft, 99.0), "max": pct(&mut ttft, 100.0)},
        "gap_ms": {"p50": pct(&mut gaps, 50.0), "p90": pct(&mut gaps, 90.0), "p99": pct(&mut gaps, 99.0), "max": pct(&mut gaps, 100.0)},
        "total_ms": {"p50": pct(&mut total, 50.0), "p99": pct(&mut total, 99.0)},
    });
    println!("{out}");
}
