//! An inbound request in the client's format, and the upstream bodies made from it.
//!
//! Triage routes on one internal shape (the OpenAI Chat Completions request). An Anthropic
//! request is translated to it for routing and for OpenAI-compatible upstreams, and kept as it
//! came for Anthropic upstreams, so Anthropic → Anthropic is forwarded without loss (only
//! `model` is rewritten). An OpenAI request routed to an Anthropic model is translated.

use serde::de::DeserializeOwned;
use triage_core::anthropic::MessagesRequest;
use triage_core::catalog::{Model, ProviderKind};
use triage_core::openai::ChatRequest;
use triage_core::translate;

use crate::error::GatewayError;

/// The client's wire format.
pub use crate::providers::WireFormat as Format;

/// A parsed inbound request.
#[derive(Debug)]
pub struct Inbound {
    /// The client's format.
    pub format: Format,
    /// The request in the internal (OpenAI) shape.
    pub openai: ChatRequest,
    /// The request as the client sent it, when it came in Anthropic's format.
    pub anthropic: Option<MessagesRequest>,
    /// The client asked for a stream.
    pub stream: bool,
    /// An OpenAI client asked for the final usage chunk.
    pub wants_stream_usage: bool,
    /// Copies with sensitive values replaced by placeholders, for non-local providers.
    pub redacted: Option<Redacted>,
    /// Size of the client's body in bytes: the starting capacity of the upstream bodies.
    pub body_len: usize,
    /// The client's headers on [`ANTHROPIC_FORWARDED`], sent on to Anthropic upstreams only.
    pub anthropic_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Client headers forwarded to Anthropic upstreams (never to others): `anthropic-beta`
/// turns on beta features (Claude Code sends it with nearly every request: extended thinking
/// interleaved with tools, 1M context, fine-grained tool streaming).
pub const ANTHROPIC_FORWARDED: &[&str] = &["anthropic-beta"];

/// The headers of `headers` that go to Anthropic upstreams ([`ANTHROPIC_FORWARDED`]).
pub fn anthropic_headers(headers: &http::HeaderMap) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut out = Vec::new();
    for name in ANTHROPIC_FORWARDED {
        for v in headers.get_all(*name) {
            out.push((http::HeaderName::from_static(name), v.clone()));
        }
    }
    out
}

/// The request with the guard's `redact` kinds replaced by placeholders.
#[derive(Debug)]
pub struct Redacted {
    /// The internal (OpenAI) shape, redacted.
    pub openai: ChatRequest,
    /// The client's Anthropic request, redacted.
    pub anthropic: Option<MessagesRequest>,
    /// Placeholder → original value, to restore the answer.
    pub map: std::sync::Arc<triage_core::guard::Redaction>,
}

/// Parses `bytes` as `T`; errors name the field at fault (`messages[0].content`).
///
/// Errors: [`GatewayError::InvalidRequest`] for a body that is not JSON or not a `T`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    // Valid bodies (nearly all) parse without tracking the path, which costs an allocation per
    // object key; only a failed parse is repeated with tracking, to name the field at fault.
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => parse_json_tracked(bytes),
    }
}

/// [`parse_json`] with the path to the failing field tracked.
fn parse_json_tracked<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    use serde_json::error::Category;
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                GatewayError::invalid(format!("the body is not valid JSON: {inner}"), None)
            }
            Category::Data => {
                let msg = inner.to_string();
                let missing = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()).map(str::to_owned);
                match (path.as_str(), missing) {
                    (".", Some(field)) => {
                        GatewayError::invalid(format!("{field}: this field is required ({msg})"), Some(field))
                    }
                    (".", None) => GatewayError::invalid(format!("the body must be a JSON object: {msg}"), None),
                    (p, Some(field)) => {
                        let full = format!("{p}.{field}");
                        GatewayError::invalid(format!("{full}: this field is required ({msg})"), Some(full))
                    }
                    (p, None) => GatewayError::invalid(format!("{p}: {msg}"), Some(p.to_owned())),
                }
            }
        }
    })?;
    de.end().map_err(|e| GatewayError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    Ok(value)
}

impl Inbound {
    /// Parses and validates a body of the given format.
    ///
    /// Errors: [`GatewayError::InvalidRequest`] naming the field.
    pub fn parse(format: Format, bytes: &[u8]) -> Result<Inbound, GatewayError> {
        match format {
            Format::OpenAi => {
                let openai: ChatRequest = parse_json(bytes)?;
                if openai.model.is_empty() {
                    return Err(GatewayError::invalid("model: must not be empty", Some("model".into())));
                }
                if openai.messages.is_empty() {
                    return Err(GatewayError::invalid(
                        "messages: must contain at least one message",
                        Some("messages".into()),
                    ));
                }
                Ok(Inbound {
                    format,
                    stream: openai.is_stream(),
                    wants_stream_usage: openai.wants_stream_usage(),
                    openai,
                    anthropic: None,
                    redacted: None,
                    body_len: bytes.len(),
                    anthropic_headers: Vec::new(),
                })
            }
            Format::Anthropic => {
                let mut native: MessagesRequest = parse_json(bytes)?;
                // Claude Code sends `system`-role messages inside `messages`: they join `system`.
                if native.fold_system_messages() > 0 && native.messages.is_empty() {
                    return Err(GatewayError::invalid(
                        "messages: must contain at least one user or assistant message",
                        Some("messages".into()),
                    ));
                }
                if native.model.is_empty() {
                    return Err(GatewayError::invalid("model: must not be empty", Some("model".into())));
                }
                if native.messages.is_empty() {
                    return Err(GatewayError::invalid(
                        "messages: must contain at least one message",
                        Some("messages".into()),
                    ));
                }
                if native.max_tokens == 0 {
                    return Err(GatewayError::invalid("max_tokens: must be at least 1", Some("max_tokens".into())));
                }
                Ok(Inbound {
                    format,
                    stream: native.is_stream(),
                    wants_stream_usage: false,
                    openai: translate::anthropic_to_openai(&native),
                    anthropic: Some(native),
                    redacted: None,
                    body_len: bytes.len(),
                    anthropic_headers: Vec::new(),
                })
            }
        }
    }

    /// The placeholder map when a non-`local` provider serves the request, else `None`.
    pub fn redaction_for(&self, local: bool) -> Option<std::sync::Arc<triage_core::guard::Redaction>> {
        if local {
            return None;
        }
        self.redacted.as_ref().map(|r| r.map.clone())
    }

    /// The upstream body for a deployment of `model` on a provider of `kind`; a non-`local`
    /// provider gets the redacted request when the guard redacted something.
    ///
    /// Errors: [`GatewayError::InvalidRequest`] when the request cannot be expressed for that
    /// provider (e.g. `n > 1` for Anthropic).
    pub fn body_for(
        &mut self,
        kind: ProviderKind,
        upstream_model: &str,
        model: &Model,
        local: bool,
    ) -> Result<Vec<u8>, GatewayError> {
        let stream = self.stream;
        // The upstream body is about the client's size (only `model` and a few fields change).
        let mut out = Vec::with_capacity(self.body_len + 64);
        let (openai, anthropic) = match (&mut self.redacted, local) {
            (Some(r), false) => (&mut r.openai, &mut r.anthropic),
            _ => (&mut self.openai, &mut self.anthropic),
        };
        let json = match kind {
            ProviderKind::OpenAi | ProviderKind::Local => {
                if stream {
                    // Triage always needs usage for its own accounting (shared case C28).
                    openai.stream_options.get_or_insert_with(Default::default).include_usage = Some(true);
                }
                let client_model = std::mem::replace(&mut openai.model, upstream_model.to_owned());
                // Anthropic's signed thinking blocks (`thinking_blocks`, carried for the client)
                // are for Anthropic upstreams: OpenAI-compatible ones may refuse the field.
                let thinking = triage_core::translate::THINKING_BLOCKS;
                let json = if openai.messages.iter().any(|m| m.extra.contains_key(thinking)) {
                    let mut stripped = openai.clone();
                    for m in &mut stripped.messages {
                        m.extra.remove(thinking);
                    }
                    serde_json::to_writer(&mut out, &stripped)
                } else {
                    serde_json::to_writer(&mut out, &*openai)
                };
                openai.model = client_model;
                json
            }
            ProviderKind::Anthropic => match anthropic {
                Some(native) => {
                    let client_model = std::mem::replace(&mut native.model, upstream_model.to_owned());
                    let json = serde_json::to_writer(&mut out, &*native);
                    native.model = client_model;
                    json
                }
                None => {
                    // Anthropic requires max_tokens: the model's maximum when the client set none
                    // (shared case C17), else a documented 8,192.
                    let default = model.max_output_tokens.unwrap_or(8192);
                    let req = translate::openai_to_anthropic(openai, upstream_model, default)
                        .map_err(|e| GatewayError::invalid(e.to_string(), Some(e.param)))?;
                    serde_json::to_writer(&mut out, &req)
                }
            },
        };
        json.map(|()| out).map_err(|e| GatewayError::invalid(format!("the request cannot be serialized: {e}"), None))
    }
}
