//! Upstream providers: one file per wire protocol, one enum to dispatch on.
//!
//! A provider turns Triage's internal request (the OpenAI Chat Completions shape) into a call to
//! its upstream and the answer back into internal form: a whole [`ChatCompletion`], or a
//! [`ChunkStream`] of OpenAI-shaped chunks. Errors are split into an upstream error *status*
//! (the upstream answered, and the client may see its body) and a transport failure.

pub mod openai;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use triage_core::catalog::{Provider, ProviderKind};
use triage_core::openai::{ChatCompletion, ChatRequest};

pub use openai::{Batch, ChunkStream, StreamItem};

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// No response headers within the first-byte timeout.
    FirstByte(Duration),
    /// No bytes for the idle timeout in the middle of a stream.
    Idle(Duration),
    /// The whole non-streamed call took longer than the request timeout.
    Request(Duration),
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutKind::FirstByte(d) => write!(f, "no response within {} ms", d.as_millis()),
            TimeoutKind::Idle(d) => write!(f, "the stream sent nothing for {} ms", d.as_millis()),
            TimeoutKind::Request(d) => write!(f, "the call took longer than {} ms", d.as_millis()),
        }
    }
}

/// A call that failed without a usable upstream answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, DNS failure, TLS failure.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A timeout fired.
    #[error("timeout: {0}")]
    Timeout(TimeoutKind),
    /// The connection broke mid-answer.
    #[error("connection failed: {0}")]
    Io(String),
    /// The upstream answered something that is not its protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The upstream sent an error event inside a 200 stream.
    #[error("error in the stream: {0}")]
    InBand(String),
    /// The stream ended before the answer finished.
    #[error("the stream closed before the answer finished")]
    Truncated,
}

/// Why a call did not produce an answer.
#[derive(Debug)]
pub enum CallError {
    /// The upstream answered with a non-2xx status.
    Status {
        /// The status.
        status: StatusCode,
        /// The body, with the provider's key scrubbed out.
        body: Bytes,
        /// The upstream's `retry-after` header.
        retry_after: Option<HeaderValue>,
        /// The upstream's `retry-after-ms` header (OpenAI, Anthropic).
        retry_after_ms: Option<HeaderValue>,
    },
    /// No answer.
    Failed(UpstreamError),
}

/// What a successful call returns.
pub enum Reply {
    /// A whole completion (non-streamed request).
    Complete(ChatCompletion),
    /// A stream of chunks (streamed request); the status was 2xx.
    Stream(ChunkStream),
}

/// An API key read from the environment. Never printed: `Debug` shows `ApiKey(***)`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads the key from the environment variable `var`; `None` when unset or empty.
    pub fn from_env(var: &str) -> Option<ApiKey> {
        std::env::var(var).ok().filter(|k| !k.trim().is_empty()).map(|k| ApiKey(k.trim().to_owned()))
    }

    /// The key's text, for building auth headers only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Replaces every occurrence of `key` in `body` with `[REDACTED]`, so that an upstream that
/// echoes the key in an error message never passes it on.
pub fn scrub(body: Bytes, key: Option<&ApiKey>) -> Bytes {
    let Some(key) = key else { return body };
    let k = key.expose().as_bytes();
    if k.len() < 8 || !body.windows(k.len()).any(|w| w == k) {
        return body;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest: &[u8] = &body;
    while let Some(pos) = rest.windows(k.len()).position(|w| w == k) {
        out.extend_from_slice(&rest[..pos]);
        out.extend_from_slice(b"[REDACTED]");
        rest = &rest[pos + k.len()..];
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// A provider client, dispatching on the wire protocol.
#[derive(Debug)]
pub enum ProviderClient {
    /// OpenAI-compatible Chat Completions.
    OpenAi(openai::OpenAiProvider),
}

impl ProviderClient {
    /// Builds the client for `p`, reading its key from the environment.
    ///
    /// Errors: the HTTP client cannot be built (TLS backend failure).
    pub fn new(p: &Provider) -> Result<ProviderClient, reqwest::Error> {
        let key = p.api_key_env.as_deref().and_then(ApiKey::from_env);
        Ok(match p.kind {
            ProviderKind::OpenAi => ProviderClient::OpenAi(openai::OpenAiProvider::new(p, key)?),
        })
    }

    /// True when the provider needs no key or has one.
    pub fn has_key(&self) -> bool {
        match self {
            ProviderClient::OpenAi(p) => p.has_key(),
        }
    }

    /// Sends a chat request (already carrying the upstream model name).
    ///
    /// Errors: [`CallError`].
    pub async fn chat(&self, req: &ChatRequest) -> Result<Reply, CallError> {
        match self {
            ProviderClient::OpenAi(p) => p.chat(req).await,
        }
    }

    /// A cheap reachability probe (the models list). Returns the status the upstream answered.
    ///
    /// Errors: [`UpstreamError`] when the upstream cannot be reached in time.
    pub async fn probe(&self) -> Result<StatusCode, UpstreamError> {
        match self {
            ProviderClient::OpenAi(p) => p.probe().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_every_occurrence() {
        let key = ApiKey("sk-test-PLACEHOLDER-0001".into());
        let body =
            Bytes::from_static(b"{\"error\":\"bad key sk-test-PLACEHOLDER-0001 and sk-test-PLACEHOLDER-0001!\"}");
        assert_eq!(&scrub(body, Some(&key))[..], b"{\"error\":\"bad key [REDACTED] and [REDACTED]!\"}");
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
    }
}
