//! The gateway's one error type, and its one mapping to an HTTP status and OpenAI error envelope.
//!
//! Details go to the log; the client gets a clean envelope that never holds a stack trace, a file
//! path or an API key (upstream bodies are scrubbed of the provider's key before they are passed on).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use triage_core::openai::{ErrorBody, ErrorEnvelope};
use triage_core::route::RouteError;

use crate::providers::{InBandError, UpstreamError};

/// How each server says "the prompt does not fit the context window", lowercased. Sources: the
/// servers' own error strings (OpenAI and Azure `context_length_exceeded`, Anthropic "prompt is
/// too long" / "exceed context limit", vLLM "maximum model length", SGLang "longer than the
/// model's context length", llama.cpp server `exceed_context_size_error`, Ollama, TGI's
/// `max_new_tokens must be <=`, Mistral, Bedrock "input is too long", Vertex/Gemini "input
/// token count ... exceeds the maximum number of tokens").
pub(crate) const CONTEXT_WINDOW_WORDINGS: &[&str] = &[
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "too many input tokens",
    "reduce the length",
    "exceed context limit",
    "maximum model length",
    "than the model's context length",
    "exceeds the context length",
    "exceed_context_size_error",
    "exceeds the available context size",
    "input is too large to process",
    "`max_new_tokens` must be <=",
    "tokens + `max_new_tokens`",
    "input is too long",
    "exceeds the maximum number of tokens",
];

/// True when an upstream error text (a body or an in-band message) says the prompt is longer
/// than the model's context window, in any dialect Triage knows ([`CONTEXT_WINDOW_WORDINGS`]).
pub(crate) fn is_context_window_error(text: &str) -> bool {
    let text = text.to_lowercase();
    CONTEXT_WINDOW_WORDINGS.iter().any(|w| text.contains(w))
}

/// Everything that can end a request with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed or has an invalid field (400).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, naming the field.
        message: String,
        /// The field at fault.
        param: Option<String>,
    },
    /// No, an unknown or a revoked virtual key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The key may not use the model or tier asked for (403).
    #[error("{0}")]
    Forbidden(String),
    /// Something the request names does not exist, e.g. the request id of feedback (404).
    #[error("{0}")]
    NotFound(String),
    /// A hard budget limit would be passed (429, code `budget_exceeded`).
    #[error("{message}")]
    BudgetExceeded {
        /// Which budget, its limit, what is used, and when it resets.
        message: String,
        /// Time until the budget's period resets.
        retry_after: Option<std::time::Duration>,
    },
    /// The request holds sensitive content whose policy is `block` (403); the kinds are named,
    /// never the values.
    #[error("the request contains sensitive content that the policy blocks: {0}")]
    SensitiveBlocked(String),
    /// The request holds sensitive content that must stay on this machine, and no local model
    /// can serve it (403).
    #[error("the request contains sensitive content ({0}) that may only go to a local model, and no local model can serve it; nothing was sent anywhere")]
    SensitiveNeedsLocal(String),
    /// The gateway is shutting down and its grace period is over (503).
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The budget store failed; requests are refused rather than let through unaccounted (503).
    #[error("the budget store is unavailable")]
    BudgetStore,
    /// The body exceeds `server.max_body_bytes` (413).
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive whole within `server.body_read_timeout_ms` (408).
    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout {
        /// The timeout in milliseconds.
        ms: u64,
    },
    /// Routing failed: unknown model (404), unmet requirement (400) or nothing available (503).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The upstream answered with an error status.
    #[error("upstream {provider} answered HTTP {status}")]
    UpstreamStatus {
        /// Provider name.
        provider: String,
        /// The upstream status.
        status: StatusCode,
        /// The upstream body, scrubbed of the provider's key.
        body: Bytes,
        /// The upstream `retry-after` header, passed on.
        retry_after: Option<HeaderValue>,
    },
    /// No deployment of the plan could be called: all cooling down after rate limits (429), or
    /// without keys, unreachable or with open breakers (503). `retry_after` is the shortest wait.
    #[error("no deployment can take this request now{}", match retry_after { Some(d) => format!("; retry in {} s", d.as_secs_f64().ceil()), None => String::new() })]
    NothingAvailable {
        /// When the first skipped deployment becomes callable again.
        retry_after: Option<std::time::Duration>,
        /// True when some deployment was skipped because an upstream rate-limited it.
        rate_limited: bool,
    },
    /// The upstream could not be reached or broke the protocol (502), or timed out (504).
    #[error("upstream {provider}: {source}")]
    Upstream {
        /// Provider name.
        provider: String,
        /// What went wrong.
        source: UpstreamError,
    },
}

impl GatewayError {
    /// A 400 naming `param`.
    pub fn invalid(message: impl Into<String>, param: Option<String>) -> Self {
        GatewayError::InvalidRequest { message: message.into(), param }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) | GatewayError::SensitiveBlocked(_) | GatewayError::SensitiveNeedsLocal(_) => {
                StatusCode::FORBIDDEN
            }
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::BudgetExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::BudgetStore | GatewayError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Route(RouteError::ModelNotFound { .. }) => StatusCode::NOT_FOUND,
            GatewayError::Route(RouteError::Unsatisfiable { .. }) => StatusCode::BAD_REQUEST,
            GatewayError::Route(RouteError::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NothingAvailable { rate_limited: true, .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::NothingAvailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamStatus { status, .. } if is_upstream_auth(*status) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamStatus { status, .. } => upstream_status_to_client(*status),
            GatewayError::Upstream { source, .. } => match source {
                UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                UpstreamError::InBand(e) if is_context_window_error(&e.message) => StatusCode::BAD_REQUEST,
                UpstreamError::InBand(e) if is_overloaded(e) => StatusCode::SERVICE_UNAVAILABLE,
                UpstreamError::Busy(_) | UpstreamError::Crashed(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    fn envelope(&self) -> ErrorBody {
        let (kind, code, param) = match self {
            GatewayError::InvalidRequest { param, .. } => ("invalid_request_error", None, param.clone()),
            GatewayError::PayloadTooLarge { .. } => ("invalid_request_error", Some("request_too_large"), None),
            GatewayError::BodyTimeout { .. } => ("invalid_request_error", Some("request_timeout"), None),
            GatewayError::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key"), None),
            GatewayError::Forbidden(_) => {
                ("invalid_request_error", Some("model_not_allowed"), Some("model".to_owned()))
            }
            GatewayError::NotFound(_) => ("invalid_request_error", Some("not_found"), None),
            GatewayError::SensitiveBlocked(_) => ("invalid_request_error", Some("sensitive_content_blocked"), None),
            GatewayError::SensitiveNeedsLocal(_) => {
                ("invalid_request_error", Some("sensitive_content_requires_local_model"), None)
            }
            GatewayError::BudgetExceeded { .. } => ("insufficient_quota", Some("budget_exceeded"), None),
            GatewayError::BudgetStore => ("api_error", Some("budget_store_unavailable"), None),
            GatewayError::ShuttingDown => ("api_error", Some("shutting_down"), None),
            GatewayError::Route(RouteError::ModelNotFound { .. }) => {
                ("invalid_request_error", Some("model_not_found"), Some("model".to_owned()))
            }
            GatewayError::Route(RouteError::Unsatisfiable { .. }) => {
                ("invalid_request_error", Some("no_capable_model"), Some("model".to_owned()))
            }
            GatewayError::Route(RouteError::Unavailable { .. }) => ("api_error", Some("provider_unavailable"), None),
            GatewayError::NothingAvailable { rate_limited: true, .. } => {
                ("rate_limit_error", Some("rate_limited"), None)
            }
            GatewayError::NothingAvailable { .. } => ("api_error", Some("provider_unavailable"), None),
            GatewayError::UpstreamStatus { status, .. } if is_upstream_auth(*status) => {
                ("api_error", Some("upstream_auth_failed"), None)
            }
            GatewayError::UpstreamStatus { status, body, .. }
                if status.is_client_error() && is_context_window_error(&String::from_utf8_lossy(body)) =>
            {
                ("invalid_request_error", Some("context_length_exceeded"), None)
            }
            GatewayError::UpstreamStatus { status, .. } if status.is_client_error() => {
                (triage_core::anthropic::error_type_for_status(status.as_u16()), Some("upstream_error"), None)
            }
            GatewayError::UpstreamStatus { .. } => ("api_error", Some("upstream_error"), None),
            GatewayError::Upstream { source: UpstreamError::Timeout(_), .. } => {
                ("api_error", Some("upstream_timeout"), None)
            }
            GatewayError::Upstream { source: UpstreamError::InBand(e), .. } if is_context_window_error(&e.message) => {
                ("invalid_request_error", Some("context_length_exceeded"), None)
            }
            GatewayError::Upstream { source: UpstreamError::InBand(e), .. } if is_overloaded(e) => {
                ("overloaded_error", Some("upstream_overloaded"), None)
            }
            GatewayError::Upstream { .. } => ("api_error", Some("upstream_unavailable"), None),
        };
        let message = match self {
            GatewayError::UpstreamStatus { provider, status, body, .. } if is_upstream_auth(*status) => format!(
                "upstream {provider} refused Triage's credentials for it (HTTP {}): the gateway's provider key is missing, wrong or not allowed this model; {}",
                status.as_u16(),
                upstream_error_message(body).unwrap_or_default()
            ),
            GatewayError::UpstreamStatus { provider, status, body, .. } => match upstream_error_message(body) {
                Some(m) => format!("upstream {provider} answered HTTP {}: {m}", status.as_u16()),
                None => self.to_string(),
            },
            _ => self.to_string(),
        };
        ErrorBody { message, kind: kind.to_owned(), param, code: code.map(str::to_owned) }
    }

    /// The error as the JSON body of an in-stream SSE error event (`data: {"error": {...}}`).
    pub fn to_sse_json(&self) -> Vec<u8> {
        serde_json::to_vec(&ErrorEnvelope { error: self.envelope() }).unwrap_or_default()
    }
}

/// The `error.message` (OpenAI, Anthropic), `message` (vLLM) or string `error` (TGI, Ollama) of
/// an upstream error body.
fn upstream_error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("error"))?.as_str()?;
    Some(m.chars().take(500).collect())
}

/// An in-band error the upstream typed as overload (Anthropic's `overloaded_error`).
fn is_overloaded(e: &InBandError) -> bool {
    e.kind.as_deref() == Some("overloaded_error")
}

/// An Anthropic-format error body: `{"type": "error", "error": {...}}`.
fn is_anthropic_error(v: &serde_json::Value) -> bool {
    v.get("type").and_then(|t| t.as_str()) == Some("error")
}

/// An upstream 401 or 403: the upstream refused Triage's provider key, which is no fault of the
/// client's and no answer to its own key, so it is reported as a 502 `upstream_auth_failed`.
fn is_upstream_auth(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403)
}

/// Upstream 4xx are the client's to see (passed through); upstream 5xx become 502, except
/// overload (503, 529) which stays 503 so that SDKs back off and retry, and 504.
fn upstream_status_to_client(status: StatusCode) -> StatusCode {
    if status.is_client_error() {
        return status;
    }
    match status.as_u16() {
        503 | 529 => StatusCode::SERVICE_UNAVAILABLE,
        504 => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

impl GatewayError {
    /// The error as an HTTP response in the client's format: OpenAI's envelope, or Anthropic's
    /// `{"type": "error", "error": {"type", "message"}}` with Anthropic's error types. An upstream
    /// 4xx body already in the client's format is passed through as it came.
    pub fn into_response_for(self, format: crate::providers::WireFormat) -> Response {
        match format {
            crate::providers::WireFormat::OpenAi => self.into_response(),
            crate::providers::WireFormat::Anthropic => self.into_anthropic_response(),
        }
    }

    fn into_anthropic_response(self) -> Response {
        let mut status = self.status();
        // Anthropic clients know 529 as "overloaded" and back off on it.
        let overloaded = match &self {
            GatewayError::UpstreamStatus { status: up, .. } => up.as_u16() == 529,
            GatewayError::Upstream { source: UpstreamError::InBand(e), .. } => is_overloaded(e),
            _ => false,
        };
        if overloaded {
            status = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        }
        log(&self, status);
        let mut resp = if let Some(body) = self.passthrough_body(is_anthropic_error) {
            (status, [(http::header::CONTENT_TYPE, "application/json")], body).into_response()
        } else {
            let kind = match &self {
                GatewayError::Upstream { source: UpstreamError::Timeout(_), .. } => "timeout_error",
                GatewayError::Upstream { source: UpstreamError::InBand(e), .. } if is_overloaded(e) => {
                    "overloaded_error"
                }
                GatewayError::Upstream { .. } => "api_error",
                _ => triage_core::anthropic::error_type_for_status(status.as_u16()),
            };
            let body = triage_core::anthropic::error_body(kind, &self.envelope().message);
            (status, axum::Json(body)).into_response()
        };
        self.add_retry_after(&mut resp);
        resp
    }

    /// The upstream's 4xx body when it is a JSON object that `same_format` accepts.
    fn passthrough_body(&self, same_format: impl Fn(&serde_json::Value) -> bool) -> Option<Bytes> {
        if let GatewayError::UpstreamStatus { body, status, .. } = self {
            if status.is_client_error() && !is_upstream_auth(*status) && body.first() == Some(&b'{') {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                    if same_format(&v) {
                        return Some(body.clone());
                    }
                }
            }
        }
        None
    }

    fn add_retry_after(&self, resp: &mut Response) {
        match self {
            GatewayError::UpstreamStatus { retry_after: Some(ra), .. } => {
                resp.headers_mut().insert(http::header::RETRY_AFTER, ra.clone());
            }
            GatewayError::NothingAvailable { retry_after: Some(d), .. }
            | GatewayError::BudgetExceeded { retry_after: Some(d), .. } => {
                // Whole seconds, rounded up, so a client never retries before the wait is over.
                resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(d.as_secs_f64().ceil() as u64));
            }
            _ => {}
        }
    }

    /// The error as the data of an Anthropic in-stream `error` event.
    pub fn to_anthropic_sse_json(&self) -> Vec<u8> {
        let kind = match self.status().as_u16() {
            503 | 529 => "overloaded_error",
            400 => "invalid_request_error",
            _ => "api_error",
        };
        serde_json::to_vec(&triage_core::anthropic::error_body(kind, &self.envelope().message)).unwrap_or_default()
    }
}

fn log(e: &GatewayError, status: StatusCode) {
    if status.is_server_error() {
        tracing::warn!(error = %e, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(error = %e, status = status.as_u16(), "request refused");
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        log(&self, status);
        // An upstream 4xx body that is already an OpenAI error object goes to the client as it
        // is, so provider details (e.g. content-filter results) survive.
        // An Anthropic body (`{"type": "error", "error": {...}}`) is translated, not passed on.
        // A context-window error goes as it came only when it already has OpenAI's code for it.
        let same = |v: &serde_json::Value| {
            v.get("error").is_some_and(|e| e.is_object())
                && !is_anthropic_error(v)
                && (v.pointer("/error/code").and_then(|c| c.as_str()) == Some("context_length_exceeded")
                    || !is_context_window_error(&v.to_string()))
        };
        let mut resp = match self.passthrough_body(same) {
            Some(body) => (status, [(http::header::CONTENT_TYPE, "application/json")], body).into_response(),
            None => (status, axum::Json(ErrorEnvelope { error: self.envelope() })).into_response(),
        };
        self.add_retry_after(&mut resp);
        resp
    }
}
