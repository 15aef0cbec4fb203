//! Test harness: the real gateway server on 127.0.0.1 in front of scripted fake upstreams.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use triage_core::config;

#[allow(unused_imports)]
pub use triage_testkit::{FakeUpstream, Reply, Step};

/// A running gateway; dropping it stops the server.
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    /// A gateway whose server task the test started itself (no shutdown signal).
    pub fn running(addr: SocketAddr, task: tokio::task::JoinHandle<std::io::Result<()>>) -> Gateway {
        Gateway { addr, stop: None, task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends the shutdown signal (as SIGTERM would) and returns the server task.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().expect("server task")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A fresh SQLite database URL in the temp directory.
pub fn temp_db() -> String {
    let path = std::env::temp_dir().join(format!("triage-gw-test-{}.db", uuid::Uuid::new_v4().simple()));
    format!("sqlite://{}", path.display())
}

/// Starts the gateway with config `toml` (given a fresh temporary ledger database unless the
/// config names one).
pub async fn start(toml: &str) -> Gateway {
    let mut toml = if toml.contains("[spend]") {
        toml.to_owned()
    } else {
        format!("{toml}\n[spend]\ndatabase = \"{}\"\n", temp_db())
    };
    // The rule-based `auto` keeps routing expectations exact; the scorer has its own tests.
    if !toml.contains("[router]") {
        toml.push_str("\n[router]\nscorer = \"cheapest\"\n");
    }
    let catalog = config::parse(&toml, "test.toml").unwrap_or_else(|e| panic!("test config: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(triage_gateway::serve(catalog, listener, async move {
        let _ = rx.await;
    }));
    Gateway { addr, stop: Some(tx), task: Some(task) }
}

/// A config with one OpenAI-compatible provider at `url` serving `openai-model`
/// (upstream `gpt-test-upstream`, tier `mid`, $1 in / $3 out, every capability), idle and
/// first-byte timeouts of 2 s (shared case C25's settings), and `extra` appended.
pub fn one_model(url: &str, extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]

[server]
shutdown_grace_secs = 5

[providers.oa]
kind = "openai"
base_url = "{url}"
first_byte_timeout_ms = 2000
idle_timeout_ms = 2000
request_timeout_ms = 5000

[[models]]
id = "openai-model"
provider = "oa"
upstream_model = "gpt-test-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 128000
capabilities = ["tools", "vision", "json_schema"]
{extra}
"#
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

pub async fn post(gw: &Gateway, body: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            assert!(e.starts_with("data: "), "every event must be one `data: ` line, got {e:?}");
            assert!(!e.contains('\r'), "framing must be LF only");
            e["data: ".len()..].to_owned()
        })
        .collect()
}

/// Parses each chunk payload (everything but `[DONE]`) as JSON.
pub fn chunks(data: &[String]) -> Vec<serde_json::Value> {
    data.iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect()
}

/// The concatenated `delta.content` of choice 0.
pub fn content(chunks: &[serde_json::Value]) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

/// An OpenAI chunk line as the upstream would send it.
pub fn chunk_line(id: &str, delta: &str, finish: Option<&str>) -> String {
    let finish = finish.map_or("null".to_owned(), |f| format!("\"{f}\""));
    format!(
        "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

pub const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6},"system_fingerprint":"fp_x"}"#;

pub async fn json_body(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
