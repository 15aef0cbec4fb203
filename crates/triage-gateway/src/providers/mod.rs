//! Upstream providers: one file per wire protocol, sharing one HTTP client shape.
//!
//! A provider sends a request body already in its wire format (built by
//! [`crate::inbound::Inbound::body_for`]) and returns the answer decoded: a whole
//! [`Completion`], or a [`ChunkStream`] of OpenAI chunks or Anthropic events. Errors are split into
//! an upstream error *status* (the upstream answered, and the client may see its body) and a
//! transport failure.

pub mod anthropic;
pub mod local;
pub mod openai;
mod scrub;
mod stream;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, StatusCode};
use triage_core::catalog::{Provider, ProviderKind, Timeouts};
use triage_core::openai::ChatCompletion;
use triage_core::retry;
use triage_local::EngineState;

pub use scrub::Scrubber;
pub use stream::{Batch, ChunkStream, StreamItem};

/// The wire format of a request or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl WireFormat {
    /// The ledger's name of the client endpoint of this format: `chat_completions` or `messages`.
    pub fn endpoint(self) -> &'static str {
        match self {
            WireFormat::OpenAi => "chat_completions",
            WireFormat::Anthropic => "messages",
        }
    }

    /// The format a provider kind speaks.
    pub fn of(kind: ProviderKind) -> WireFormat {
        match kind {
            ProviderKind::OpenAi | ProviderKind::Local => WireFormat::OpenAi,
            ProviderKind::Anthropic => WireFormat::Anthropic,
        }
    }
}

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
    /// The upstream sent an error event inside a 200 stream (or an error object as a 200 body).
    #[error("error in the stream: {0}")]
    InBand(InBandError),
    /// The stream ended before the answer finished.
    #[error("the stream closed before the answer finished")]
    Truncated,
    /// A local engine's slots and queue are all taken: go elsewhere now.
    #[error("{0}")]
    Busy(String),
    /// A local engine's worker process died under the call, or is down after such a death
    /// (it is restarted): go elsewhere now.
    #[error("{0}")]
    Crashed(String),
}

/// An error the upstream sent inside a 200 answer: its type as the upstream named it
/// (`overloaded_error` in an Anthropic `error` event, `server_error` in an OpenAI-style
/// `{"error": {...}}` chunk), when it named one, and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InBandError {
    /// The upstream's error type, if any.
    pub kind: Option<String>,
    /// The upstream's message.
    pub message: String,
}

impl std::fmt::Display for InBandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for InBandError {
    fn from(message: String) -> Self {
        InBandError { kind: None, message }
    }
}

impl From<&str> for InBandError {
    fn from(message: &str) -> Self {
        InBandError { kind: None, message: message.to_owned() }
    }
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

/// A whole answer in the provider's format.
#[derive(Debug)]
pub enum Completion {
    /// An OpenAI chat completion.
    OpenAi(ChatCompletion),
    /// An Anthropic message.
    Anthropic(triage_core::anthropic::Response),
}

/// What a successful call returns.
pub enum Reply {
    /// A whole answer (non-streamed request).
    Complete(Completion),
    /// A stream (streamed request); the status was 2xx.
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
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The message of an `{"error": ...}` body (OpenAI or Anthropic), if `body` is one.
pub(crate) fn in_band_error(body: &[u8]) -> Option<InBandError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error").filter(|e| !e.is_null())?;
    let text = |v: Option<&serde_json::Value>| v.and_then(|m| m.as_str()).map(str::to_owned);
    // OpenAI and vLLM: `{"error": {"message", "type"}}`; TGI: `{"error": "...", "error_type"}`.
    Some(match e.as_str() {
        Some(m) => InBandError { kind: text(v.get("error_type")), message: m.to_owned() },
        None => {
            InBandError { kind: text(e.get("type")), message: text(e.get("message")).unwrap_or_else(|| e.to_string()) }
        }
    })
}

/// The most of an upstream error body that is read (and may be passed on), in bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The first `limit` bytes of `resp`'s body (what arrived, if the body breaks off).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Bytes {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = limit - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Bytes::from(out)
}

/// An HTTP client of one provider: URL, auth headers, timeouts, connection pool.
#[derive(Debug)]
pub struct HttpProvider {
    http: reqwest::Client,
    call_url: String,
    /// `call_url` parsed once (`None` if it does not parse: each call then reports the error).
    call_target: Option<reqwest::Url>,
    models_url: String,
    /// Removes the key from every upstream text this provider passes on.
    scrubber: Scrubber,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// False when the provider needs a key and its variable is unset.
    has_key: bool,
    timeouts: Timeouts,
    format: WireFormat,
}

impl HttpProvider {
    fn new(
        p: &Provider,
        key: Option<ApiKey>,
        headers: Vec<(HeaderName, HeaderValue)>,
        path: &str,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(p.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        let call_url = format!("{}/{path}", p.base_url);
        Ok(HttpProvider {
            http,
            call_target: reqwest::Url::parse(&call_url).ok(),
            call_url,
            models_url: format!("{}/models", p.base_url),
            scrubber: Scrubber::new(key.as_ref()),
            headers,
            has_key: p.api_key_env.is_none() || key.is_some(),
            timeouts: p.timeouts,
            format: WireFormat::of(p.kind),
        })
    }

    fn with_headers(&self, mut b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        for (k, v) in &self.headers {
            b = b.header(k, v.clone());
        }
        b
    }

    /// Sends `body` (already in this provider's format); `stream` says whether it asks for SSE.
    /// Every upstream text in an error (bodies, messages, in-stream error events later read
    /// from the returned stream) has the provider's key scrubbed out.
    ///
    /// Errors: [`CallError`].
    pub async fn call(&self, body: Vec<u8>, stream: bool) -> Result<Reply, CallError> {
        self.call_with(body, stream, &[]).await
    }

    /// [`HttpProvider::call`] with `extra` headers added to this call (the client's forwarded
    /// provider headers, e.g. `anthropic-beta`).
    ///
    /// Errors: [`CallError`].
    pub async fn call_with(
        &self,
        body: Vec<u8>,
        stream: bool,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, CallError> {
        match self.call_unscrubbed(body, stream, extra).await {
            Ok(Reply::Stream(s)) => Ok(Reply::Stream(s.scrubbed_by(self.scrubber.clone()))),
            Ok(r) => Ok(r),
            Err(e) => Err(self.scrubber.call_error(e)),
        }
    }

    async fn call_unscrubbed(
        &self,
        body: Vec<u8>,
        stream: bool,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, CallError> {
        // A parsed URL is cloned, not re-parsed on every call.
        let post = match &self.call_target {
            Some(url) => self.http.post(url.clone()),
            None => self.http.post(&self.call_url),
        };
        let mut builder = self.with_headers(post).header(CONTENT_TYPE, "application/json").body(body);
        for (k, v) in extra {
            builder = builder.header(k, v.clone());
        }
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
            // Only well-formed values are kept: the header is passed on to the client.
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .filter(|v| {
                    v.to_str().ok().and_then(|t| retry::parse_retry_after(t, std::time::SystemTime::now())).is_some()
                })
                .cloned();
            let retry_after_ms = resp
                .headers()
                .get("retry-after-ms")
                .filter(|v| v.to_str().ok().and_then(retry::parse_retry_after_ms).is_some())
                .cloned();
            let body = read_capped(resp, MAX_ERROR_BODY).await;
            return Err(CallError::Status { status, body, retry_after, retry_after_ms });
        }
        let failed = |e: reqwest::Error| CallError::Failed(classify(&e, self.timeouts.request));
        if stream {
            let is_sse = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if !is_sse {
                // Some servers answer errors to a streamed request as a 200 JSON body.
                let body = read_capped(resp, MAX_ERROR_BODY).await;
                let msg = in_band_error(&body).unwrap_or_else(|| "a streamed request got a non-SSE answer".into());
                return Err(CallError::Failed(UpstreamError::InBand(msg)));
            }
            return Ok(Reply::Stream(ChunkStream::new(Box::pin(resp.bytes_stream()), self.format, self.timeouts.idle)));
        }
        let bytes = resp.bytes().await.map_err(failed)?;
        // A 200 whose body is an error object (some proxies answer failures so) is a failure,
        // never a completion with no choices.
        if bytes.first() == Some(&b'{') {
            if let Some(msg) = in_band_error(&bytes) {
                return Err(CallError::Failed(UpstreamError::InBand(msg)));
            }
        }
        let parsed = match self.format {
            WireFormat::OpenAi => serde_json::from_slice::<ChatCompletion>(&bytes).map(Completion::OpenAi),
            WireFormat::Anthropic => serde_json::from_slice(&bytes).map(Completion::Anthropic),
        };
        parsed.map(Reply::Complete).map_err(|e| {
            let msg =
                in_band_error(&bytes).map_or_else(|| format!("the answer is not a completion: {e}"), |e| e.message);
            CallError::Failed(UpstreamError::Protocol(msg))
        })
    }

    /// A cheap reachability probe (`GET {base_url}/models`). Returns the status the upstream answered.
    ///
    /// Errors: [`UpstreamError`] when the upstream cannot be reached in time.
    pub async fn probe(&self) -> Result<StatusCode, UpstreamError> {
        let limit = self.timeouts.connect + Duration::from_secs(2);
        let req = self.with_headers(self.http.get(&self.models_url)).timeout(limit);
        match req.send().await {
            Ok(r) => Ok(r.status()),
            Err(e) => Err(self.scrubber.upstream_error(classify(&e, limit))),
        }
    }

    /// True when the provider needs no key or has one.
    pub fn has_key(&self) -> bool {
        self.has_key
    }

    /// The wire format this provider speaks.
    pub fn format(&self) -> WireFormat {
        self.format
    }
}

/// The client of one provider: over HTTP, or the in-process engine.
#[derive(Debug)]
pub enum ProviderClient {
    /// An OpenAI-compatible or Anthropic API.
    Http(HttpProvider),
    /// A `kind = "local"` model.
    Local(local::LocalProvider),
}

impl ProviderClient {
    /// Sends `body` (already in this provider's format); `stream` says whether it asks for a
    /// stream.
    ///
    /// Errors: [`CallError`].
    pub async fn call(&self, body: Vec<u8>, stream: bool) -> Result<Reply, CallError> {
        self.call_with(body, stream, &[]).await
    }

    /// [`ProviderClient::call`] with `extra` headers on an HTTP call (a local engine has none).
    ///
    /// Errors: [`CallError`].
    pub async fn call_with(
        &self,
        body: Vec<u8>,
        stream: bool,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, CallError> {
        match self {
            ProviderClient::Http(h) => h.call_with(body, stream, extra).await,
            ProviderClient::Local(l) => l.call(&body, stream).await,
        }
    }

    /// A cheap reachability probe; for a local provider, whether its model is loaded.
    ///
    /// Errors: [`UpstreamError`] when the provider cannot be reached (or its model not loaded).
    pub async fn probe(&self) -> Result<StatusCode, UpstreamError> {
        match self {
            ProviderClient::Http(h) => h.probe().await,
            ProviderClient::Local(l) => l.probe(),
        }
    }

    /// True when the provider needs no key or has one.
    pub fn has_key(&self) -> bool {
        match self {
            ProviderClient::Http(h) => h.has_key(),
            ProviderClient::Local(_) => true,
        }
    }

    /// False for a `local` provider whose model cannot be loaded or whose worker is down after
    /// a crash (always true over HTTP; a local engine still loading counts as loaded: calls
    /// wait for it).
    pub fn loaded(&self) -> bool {
        match self {
            ProviderClient::Http(_) => true,
            ProviderClient::Local(l) => matches!(l.state(), EngineState::Loading | EngineState::Ready),
        }
    }

    /// A `local` provider's engine state (`None` over HTTP).
    pub fn local_state(&self) -> Option<EngineState> {
        match self {
            ProviderClient::Http(_) => None,
            ProviderClient::Local(l) => Some(l.state()),
        }
    }

    /// True when a local engine's slots and queue are all taken (never for HTTP providers).
    pub fn busy(&self) -> bool {
        match self {
            ProviderClient::Http(_) => false,
            ProviderClient::Local(l) => l.busy(),
        }
    }

    /// The local engine of a `local` provider.
    pub fn local_engine(&self) -> Option<&std::sync::Arc<triage_local::EngineProcess>> {
        match self {
            ProviderClient::Http(_) => None,
            ProviderClient::Local(l) => l.engine(),
        }
    }

    /// The wire format this provider speaks.
    pub fn format(&self) -> WireFormat {
        match self {
            ProviderClient::Http(h) => h.format(),
            ProviderClient::Local(_) => WireFormat::OpenAi,
        }
    }
}

/// Builds the client for `p`, reading its key from the environment; a `local` provider starts
/// its engine worker here (on the current tokio runtime; the model loads in the background).
///
/// Errors: the HTTP client cannot be built (TLS backend failure).
pub fn client_for(p: &Provider) -> Result<ProviderClient, reqwest::Error> {
    let key = p.api_key_env.as_deref().and_then(ApiKey::from_env);
    Ok(match p.kind {
        ProviderKind::OpenAi => ProviderClient::Http(openai::provider(p, key)?),
        ProviderKind::Anthropic => ProviderClient::Http(anthropic::provider(p, key)?),
        ProviderKind::Local => ProviderClient::Local(local::LocalProvider::new(p)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_never_print() {
        assert_eq!(format!("{:?}", ApiKey("sk-test-PLACEHOLDER-0001".into())), "ApiKey(***)");
    }
}
