//! Provider `kind = "openai"`: any OpenAI-compatible Chat Completions API.
//!
//! Requests go to `{base_url}/chat/completions` with `Authorization: Bearer <key>`; the
//! reachability probe is `GET {base_url}/models`. Streams are read incrementally through the
//! [`SseDecoder`], with the provider's idle timeout between reads (shared case C25).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use triage_core::catalog::{Provider, Timeouts};
use triage_core::openai::{ChatChunk, ChatCompletion, ChatRequest};
use triage_core::sse::{SseDecoder, SseEvent};

use super::{scrub, ApiKey, CallError, Reply, TimeoutKind, UpstreamError};

/// Client of one OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    chat_url: String,
    models_url: String,
    key: Option<ApiKey>,
    auth: Option<HeaderValue>,
    needs_key: bool,
    timeouts: Timeouts,
}

impl OpenAiProvider {
    /// Builds the client. `key` is `None` when the provider needs none or its variable is unset.
    ///
    /// Errors: the HTTP client cannot be built.
    pub fn new(p: &Provider, key: Option<ApiKey>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(p.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        let auth = key.as_ref().and_then(|k| {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose())).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Ok(OpenAiProvider {
            http,
            chat_url: format!("{}/chat/completions", p.base_url),
            models_url: format!("{}/models", p.base_url),
            key,
            auth,
            needs_key: p.api_key_env.is_some(),
            timeouts: p.timeouts,
        })
    }

    /// True when the provider needs no key or has one.
    pub fn has_key(&self) -> bool {
        !self.needs_key || self.auth.is_some()
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(a) => builder.header(AUTHORIZATION, a.clone()),
            None => builder,
        }
    }

    /// Sends `req`; see [`super::ProviderClient::chat`].
    pub async fn chat(&self, req: &ChatRequest) -> Result<Reply, CallError> {
        let body = serde_json::to_vec(req).map_err(|e| CallError::Failed(UpstreamError::Protocol(e.to_string())))?;
        let stream = req.is_stream();
        let mut builder =
            self.request(self.http.post(&self.chat_url)).header(CONTENT_TYPE, "application/json").body(body);
        if !stream {
            builder = builder.timeout(self.timeouts.request);
        }
        let first_byte = self.timeouts.first_byte;
        let resp = match tokio::time::timeout(first_byte, builder.send()).await {
            Err(_) => return Err(CallError::Failed(UpstreamError::Timeout(TimeoutKind::FirstByte(first_byte)))),
            Ok(Err(e)) => return Err(CallError::Failed(classify(&e, self.timeouts.request))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp.headers().get(RETRY_AFTER).cloned();
            let retry_after_ms = resp.headers().get("retry-after-ms").cloned();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(CallError::Status {
                status,
                body: scrub(body, self.key.as_ref()),
                retry_after,
                retry_after_ms,
            });
        }
        if stream {
            let is_sse = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if !is_sse {
                // Some servers answer errors to a streamed request as a 200 JSON body.
                let body = resp.bytes().await.map_err(|e| CallError::Failed(classify(&e, self.timeouts.request)))?;
                let msg = in_band_error(&body).unwrap_or_else(|| "a streamed request got a non-SSE answer".to_owned());
                return Err(CallError::Failed(UpstreamError::InBand(msg)));
            }
            return Ok(Reply::Stream(ChunkStream::new(Box::pin(resp.bytes_stream()), self.timeouts.idle)));
        }
        let bytes = resp.bytes().await.map_err(|e| CallError::Failed(classify(&e, self.timeouts.request)))?;
        serde_json::from_slice::<ChatCompletion>(&bytes).map(Reply::Complete).map_err(|e| {
            let msg = in_band_error(&bytes).unwrap_or_else(|| format!("the answer is not a chat completion: {e}"));
            CallError::Failed(UpstreamError::Protocol(msg))
        })
    }

    /// See [`super::ProviderClient::probe`].
    pub async fn probe(&self) -> Result<StatusCode, UpstreamError> {
        let limit = self.timeouts.connect + Duration::from_secs(2);
        let req = self.request(self.http.get(&self.models_url)).timeout(limit);
        match req.send().await {
            Ok(r) => Ok(r.status()),
            Err(e) => Err(classify(&e, limit)),
        }
    }
}

fn classify(e: &reqwest::Error, request_timeout: Duration) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout(TimeoutKind::Request(request_timeout))
    } else if e.is_connect() {
        UpstreamError::Connect(root_cause(e))
    } else {
        UpstreamError::Io(root_cause(e))
    }
}

/// The innermost error message (reqwest's own says only "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The message of an `{"error": ...}` body, if `body` is one.
fn in_band_error(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    Some(match e.get("message").and_then(|m| m.as_str()) {
        Some(m) => m.to_owned(),
        None => e.to_string(),
    })
}

/// One decoded item of an upstream stream.
#[derive(Debug)]
pub enum StreamItem {
    /// A chunk.
    Chunk(ChatChunk),
    /// `data: [DONE]`.
    Done,
}

/// How a read of the stream ended.
#[derive(Debug)]
pub enum Batch {
    /// More may follow.
    More,
    /// The upstream closed the body (after `[DONE]` or not).
    End,
    /// The stream failed; items decoded before the failure are still in the batch.
    Failed(UpstreamError),
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// An upstream SSE body, decoded into chunks one network read at a time.
pub struct ChunkStream {
    body: ByteStream,
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    idle: Duration,
    done: bool,
}

impl ChunkStream {
    fn new(body: ByteStream, idle: Duration) -> Self {
        ChunkStream { body, decoder: SseDecoder::new(), events: Vec::new(), idle, done: false }
    }

    /// Waits for the next network read and decodes every complete event in it into `out`.
    /// Reads with no complete event (a split line, a comment) reset the idle timer and are
    /// followed by the next read before returning. After `[DONE]`, nothing more is read.
    pub async fn next_batch(&mut self, out: &mut Vec<StreamItem>) -> Batch {
        loop {
            if self.done {
                return Batch::End;
            }
            let read = match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => return Batch::Failed(UpstreamError::Timeout(TimeoutKind::Idle(self.idle))),
                Ok(None) => return Batch::End,
                Ok(Some(Err(e))) => return Batch::Failed(UpstreamError::Io(root_cause(&e))),
                Ok(Some(Ok(bytes))) => bytes,
            };
            if self.decoder.push(&read, &mut self.events).is_err() {
                return Batch::Failed(UpstreamError::Protocol("the event stream is not valid UTF-8".into()));
            }
            for ev in self.events.drain(..) {
                let data = ev.data.trim();
                if data == "[DONE]" {
                    out.push(StreamItem::Done);
                    self.done = true;
                    break;
                }
                match serde_json::from_str::<ChatChunk>(data) {
                    Ok(c) if !c.extra.contains_key("error") => out.push(StreamItem::Chunk(c)),
                    _ => {
                        let msg = in_band_error(data.as_bytes()).map(UpstreamError::InBand).unwrap_or_else(|| {
                            UpstreamError::Protocol("an event of the stream is not a chat completion chunk".into())
                        });
                        self.done = true;
                        return Batch::Failed(msg);
                    }
                }
            }
            if !out.is_empty() {
                return Batch::More;
            }
        }
    }
}
