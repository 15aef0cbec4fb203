//! `POST /v1/responses`: the OpenAI Responses API, served through the Chat Completions pipeline.
//!
//! The request is translated to a Chat Completions request ([`triage_core::responses`]) and
//! handed to the same pipeline as `POST /v1/chat/completions` (auth, guard, routing, budgets,
//! fallback, ledger), so it reaches every provider kind. The answer (a completion, or a stream
//! of chunks) is translated back into a Response object or the Responses event sequence. Errors
//! before the answer starts keep OpenAI's error envelope, which the Responses API shares.
//!
//! Answers are kept for `previous_response_id` in a bounded in-memory store
//! ([`ResponseStore`]: the most recent [`MAX_STORED`] responses, at most [`MAX_STORED_BYTES`] of
//! items), unless the request says `store: false`. An unknown id is a 400 naming it.
//!
//! A WebSocket upgrade on this path is refused at once (400), so clients that try the WebSocket
//! transport first fall back to HTTP without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use triage_core::openai::{ChatChunk, ChatCompletion, ErrorBody, ErrorEnvelope};
use triage_core::responses::{self as wire, StreamConverter, StreamEvent};

use crate::error::GatewayError;
use crate::inbound::{parse_json, Format};
use crate::pipeline;
use crate::state::SharedState;

/// The response header naming the built-in tools left out of a request (offered beside
/// function tools, so the model could not call them), comma-separated.
pub const DROPPED_TOOLS_HEADER: &str = "x-triage-dropped-tools";

/// The most responses kept for `previous_response_id`.
pub const MAX_STORED: usize = 1024;
/// The most bytes of stored items (serialized JSON) kept for `previous_response_id`.
pub const MAX_STORED_BYTES: usize = 64 * 1024 * 1024;

/// Recent responses' conversations (input items, then output items), by response id; the oldest
/// go first when either bound is passed.
#[derive(Debug, Default)]
pub struct ResponseStore {
    inner: Mutex<StoreInner>,
}

#[derive(Debug, Default)]
struct StoreInner {
    map: HashMap<String, (Arc<Vec<Value>>, usize)>,
    order: VecDeque<String>,
    bytes: usize,
}

impl ResponseStore {
    /// An empty store.
    pub fn new() -> ResponseStore {
        ResponseStore::default()
    }

    /// The conversation of response `id`, if kept.
    pub fn get(&self, id: &str) -> Option<Arc<Vec<Value>>> {
        self.inner.lock().ok()?.map.get(id).map(|(v, _)| v.clone())
    }

    /// Keeps `items` as the conversation of response `id`, evicting the oldest as needed. A
    /// conversation larger than [`MAX_STORED_BYTES`] alone is not kept.
    pub fn put(&self, id: String, items: Vec<Value>) {
        let size: usize = items.iter().map(|v| serde_json::to_vec(v).map_or(0, |b| b.len())).sum();
        if size > MAX_STORED_BYTES {
            return;
        }
        let Ok(mut s) = self.inner.lock() else { return };
        while s.order.len() >= MAX_STORED || s.bytes + size > MAX_STORED_BYTES {
            let Some(old) = s.order.pop_front() else { break };
            if let Some((_, n)) = s.map.remove(&old) {
                s.bytes -= n;
            }
        }
        s.bytes += size;
        s.order.push_back(id.clone());
        s.map.insert(id, (Arc::new(items), size));
    }

    /// Number of kept responses.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.map.len())
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"))
}

fn error(status: StatusCode, message: String, code: &str, param: Option<String>) -> Response {
    let body = ErrorEnvelope {
        error: ErrorBody { message, kind: "invalid_request_error".into(), param, code: Some(code.into()) },
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /v1/responses`: a WebSocket upgrade (or any GET) is refused at once with a 400, so a
/// client falls back to HTTP POST without waiting.
pub async fn refuse_get(headers: HeaderMap) -> Response {
    let msg = if is_websocket_upgrade(&headers) {
        "the WebSocket transport of the Responses API is not supported by Triage; use POST /v1/responses (HTTP, with stream: true for server-sent events)"
    } else {
        "use POST /v1/responses"
    };
    error(StatusCode::BAD_REQUEST, msg.into(), "websocket_not_supported", None)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Axum handler for `POST /v1/responses`.
pub async fn create(
    State(state): State<SharedState>,
    Extension(store): Extension<Arc<ResponseStore>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if is_websocket_upgrade(&headers) {
        return refuse_get(headers).await;
    }
    match create_inner(state, store, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response_for(Format::OpenAi),
    }
}

async fn create_inner(
    state: SharedState,
    store: Arc<ResponseStore>,
    mut headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let bytes = pipeline::read_body(&headers, body, state.catalog.server()).await?;
    let req: Value = parse_json(&bytes)?;
    let history = match req.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(store.get(id).ok_or_else(|| {
            GatewayError::invalid(
                format!("previous_response_id: no response \"{id}\" is stored here (Triage keeps the last {MAX_STORED} responses in memory, never those sent with store: false, and none across restarts); send the whole conversation in input instead"),
                Some("previous_response_id".into()),
            )
        })?),
        Some(_) => return Err(GatewayError::invalid("previous_response_id: must be a string", Some("previous_response_id".into()))),
    };
    let t = wire::to_chat(&req, history.as_deref().map(Vec::as_slice))
        .map_err(|e| GatewayError::invalid(e.to_string(), Some(e.param)))?;
    if !t.dropped_tools.is_empty() {
        tracing::debug!(tools = %t.dropped_tools.join(","), "built-in tools left out (offered beside function tools)");
    }
    let dropped = HeaderValue::from_str(&t.dropped_tools.join(",")).ok().filter(|_| !t.dropped_tools.is_empty());
    let chat = serde_json::to_vec(&t.chat)
        .map_err(|e| GatewayError::invalid(format!("the request cannot be serialized: {e}"), None))?;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let resp = pipeline::handle(state.clone(), headers, Body::from(chat), Format::OpenAi).await;
    if resp.status() != StatusCode::OK {
        // OpenAI's error envelope is the Responses API's too.
        return Ok(resp);
    }
    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let requested = req.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(d) = dropped {
        parts.headers.insert(DROPPED_TOOLS_HEADER, d);
    }
    if !t.stream {
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| GatewayError::invalid(format!("the answer could not be read: {e}"), None))?;
        let c: ChatCompletion = serde_json::from_slice(&bytes)
            .map_err(|e| GatewayError::invalid(format!("the answer is not a chat completion: {e}"), None))?;
        let mut r = wire::from_chat(&c, &id, created, &t.echo);
        if let Some(output) = r["output"].as_array_mut() {
            output.iter_mut().for_each(|item| wire::restore_namespace(item, &t.namespaced));
        }
        if t.store {
            let mut items = t.items;
            items.extend(r["output"].as_array().cloned().unwrap_or_default());
            store.put(id, items);
        }
        let body = serde_json::to_vec(&r).unwrap_or_default();
        let mut out = Response::from_parts(parts, Body::from(body));
        out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(out);
    }
    let conv = StreamConverter::new(&id, created, &requested, t.echo.clone()).with_namespaces(t.namespaced);
    let keep = t.store.then(|| (store, id, t.items));
    let events = ResponsesStream { conv, buf: Vec::new(), started: false, done: false, keep };
    let inner = body.into_data_stream();
    let stream = futures_util::stream::unfold((inner, events), |(mut inner, mut ev)| async move {
        if ev.done {
            return None;
        }
        if !ev.started {
            ev.started = true;
            let start = ev.conv.start();
            return Some((Ok::<Bytes, std::convert::Infallible>(encode(&start)), (inner, ev)));
        }
        loop {
            match inner.next().await {
                Some(Ok(bytes)) => {
                    let out = ev.feed(&bytes);
                    if ev.conv.ended() {
                        ev.done = true;
                    }
                    if !out.is_empty() {
                        return Some((Ok(encode(&out)), (inner, ev)));
                    }
                    if ev.done {
                        return None;
                    }
                }
                Some(Err(e)) => {
                    ev.done = true;
                    let out = ev.conv.fail("stream_error", &format!("the answer stream failed: {e}"));
                    return Some((Ok(encode(&out)), (inner, ev)));
                }
                None => {
                    ev.done = true;
                    let out = ev.conv.fail("stream_truncated", "the answer stream ended before it finished");
                    return (!out.is_empty()).then(|| (Ok(encode(&out)), (inner, ev)));
                }
            }
        }
    });
    let mut out = Response::from_parts(parts, Body::from_stream(stream));
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(out)
}

/// The state of one translated stream.
struct ResponsesStream {
    conv: StreamConverter,
    buf: Vec<u8>,
    started: bool,
    done: bool,
    /// Where and what to store once the answer is complete (`store` not `false`).
    keep: Option<(Arc<ResponseStore>, String, Vec<Value>)>,
}

impl ResponsesStream {
    /// Consumes the Chat Completions SSE bytes (Triage's own relay output: `data: ...\n\n`
    /// events) and returns the Responses events they make.
    fn feed(&mut self, bytes: &[u8]) -> Vec<StreamEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else { continue };
                let data = data.trim();
                if data == "[DONE]" {
                    out.extend(self.conv.finish());
                    self.store();
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                if let Some(e) = v.get("error").filter(|e| e.is_object()) {
                    let code = e.get("code").and_then(Value::as_str).unwrap_or("upstream_error").to_owned();
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("the upstream failed").to_owned();
                    out.extend(self.conv.fail(&code, &msg));
                    continue;
                }
                if let Ok(c) = serde_json::from_value::<ChatChunk>(v) {
                    out.extend(self.conv.chunk(&c));
                }
            }
        }
        out
    }

    fn store(&mut self) {
        if let Some((store, id, mut items)) = self.keep.take() {
            items.extend(self.conv.output());
            store.put(id, items);
        }
    }
}

fn encode(events: &[StreamEvent]) -> Bytes {
    let mut out = Vec::with_capacity(events.len() * 256);
    for (name, data) in events {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(&mut out, data);
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn store_is_bounded_and_evicts_the_oldest() {
        let s = ResponseStore::new();
        for i in 0..(MAX_STORED + 5) {
            s.put(format!("resp_{i}"), vec![json!({"n": i})]);
        }
        assert_eq!(s.len(), MAX_STORED);
        assert!(s.get("resp_0").is_none() && s.get("resp_4").is_none());
        assert_eq!(s.get(&format!("resp_{}", MAX_STORED + 4)).unwrap()[0]["n"], MAX_STORED + 4);
    }
}
