//! `POST /v1/responses`: the OpenAI Responses API, served through the Chat Completions pipeline.
//!
//! The request is translated to a Chat Completions request ([`triage_core::responses`]) and
//! handed to the same pipeline as `POST /v1/chat/completions` (auth, guard, routing, budgets,
//! fallback, ledger), so it reaches every provider kind. The answer (a completion, or a stream
//! of chunks) is translated back into a Response object or the Responses event sequence. Errors
//! before the answer starts keep OpenAI's error envelope, which the Responses API shares.
//!
//! Answers are kept for `previous_response_id` ([`ResponseStore`]) unless the request says
//! `store: false`: in the database when there is one (`[spend] database`, SQLite or PostgreSQL:
//! each response's own items and the response it continued, [`MAX_STORED_AGE_DAYS`] days and
//! [`MAX_STORED_ROWS`] rows at most, swept every minute), else in memory (the most recent
//! [`MAX_STORED`] responses, at most [`MAX_STORED_BYTES`] of items). Only the virtual key that
//! made a response may continue it. An unknown id (or another key's) is a 400 naming it; so is
//! one whose earlier turns were swept.
//!
//! A WebSocket upgrade on this path is refused at once (400), so clients that try the WebSocket
//! transport first fall back to HTTP without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
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

/// The most responses kept in memory (without a database) for `previous_response_id`.
pub const MAX_STORED: usize = 1024;
/// The most bytes of stored items (serialized JSON) kept in memory for `previous_response_id`.
pub const MAX_STORED_BYTES: usize = 64 * 1024 * 1024;
/// The most responses kept in the database (the oldest go first).
pub const MAX_STORED_ROWS: u64 = 20_000;
/// Responses older than this many days are removed from the database.
pub const MAX_STORED_AGE_DAYS: i64 = 30;
/// The database is swept at most this often (milliseconds), after a response is stored.
const SWEEP_EVERY_MS: i64 = 60_000;
/// A response adding more than this (serialized items) to its conversation is not stored.
pub const MAX_ROW_BYTES: usize = 16 * 1024 * 1024;

/// What [`ResponseStore::conversation`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The conversation's items, oldest first (input items and output items of each turn).
    Found(Vec<Value>),
    /// No such response kept for this key.
    Unknown,
    /// Kept, but an earlier response of its conversation (this id) was removed.
    Incomplete(String),
}

/// Responses kept for `previous_response_id`: in the database when the gateway has one, else
/// in memory (recent responses' whole conversations, by id; the oldest go first when either
/// bound is passed).
#[derive(Debug, Default)]
pub struct ResponseStore {
    inner: Mutex<StoreInner>,
    db: Option<triage_store::Store>,
    last_sweep_ms: AtomicI64,
}

#[derive(Debug, Default)]
struct StoreInner {
    map: HashMap<String, Kept>,
    order: VecDeque<String>,
    bytes: usize,
}

#[derive(Debug)]
struct Kept {
    items: Arc<Vec<Value>>,
    size: usize,
    key_id: Option<String>,
}

impl ResponseStore {
    /// An empty store in memory.
    pub fn new() -> ResponseStore {
        ResponseStore::default()
    }

    /// A store in `db` (`None`: in memory).
    pub fn with_database(db: Option<triage_store::Store>) -> ResponseStore {
        ResponseStore { db, ..ResponseStore::default() }
    }

    /// True when responses are kept in the database.
    pub fn is_persistent(&self) -> bool {
        self.db.is_some()
    }

    /// The conversation that ends with response `id`, as the key `key_id` may see it (a
    /// response made with another key, or without one, is [`Lookup::Unknown`]).
    ///
    /// Errors: the database failed (a message for the log).
    pub async fn conversation(&self, id: &str, key_id: Option<&str>) -> Result<Lookup, String> {
        let Some(db) = &self.db else {
            let Ok(s) = self.inner.lock() else { return Ok(Lookup::Unknown) };
            return Ok(match s.map.get(id) {
                Some(k) if k.key_id.as_deref() == key_id => Lookup::Found(k.items.as_ref().clone()),
                _ => Lookup::Unknown,
            });
        };
        match db.conversation(id, key_id).await.map_err(|e| e.to_string())? {
            triage_store::Conversation::Found(rows) => {
                let mut items = Vec::new();
                for row in rows {
                    match serde_json::from_str::<Vec<Value>>(&row) {
                        Ok(v) => items.extend(v),
                        Err(e) => return Err(format!("a stored response is not a JSON array of items: {e}")),
                    }
                }
                Ok(Lookup::Found(items))
            }
            triage_store::Conversation::Unknown => Ok(Lookup::Unknown),
            triage_store::Conversation::Incomplete(missing) => Ok(Lookup::Incomplete(missing)),
        }
    }

    /// Keeps response `id`: `new_items` are what it added to the conversation (its request's
    /// new input items, then its output), `whole` the whole conversation (history first),
    /// `previous_id` the response it continued, `key_id` the key that made it. In the database
    /// only `new_items` are written (with the link to `previous_id`); in memory, `whole`.
    /// Failures are logged, never the client's.
    pub async fn put(
        &self,
        id: String,
        previous_id: Option<String>,
        key_id: Option<String>,
        new_items: &[Value],
        whole: Vec<Value>,
    ) {
        let Some(db) = &self.db else {
            self.put_memory(id, key_id, whole);
            return;
        };
        let items = serde_json::to_string(new_items).unwrap_or_else(|_| "[]".into());
        if items.len() > MAX_ROW_BYTES {
            tracing::debug!(bytes = items.len(), "response not stored: larger than MAX_ROW_BYTES");
            return;
        }
        let now = i64::try_from(triage_store::now_ms()).unwrap_or(i64::MAX);
        let row = triage_store::StoredResponse { id, previous_id, key_id, created_ms: now, items };
        if let Err(e) = db.put_response(&row).await {
            tracing::warn!(error = %e, "a response could not be stored for previous_response_id");
        }
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now - last >= SWEEP_EVERY_MS
            && self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let db = db.clone();
            tokio::spawn(async move {
                let older_than = now - MAX_STORED_AGE_DAYS * 24 * 3600 * 1000;
                match db.sweep_responses(older_than, MAX_STORED_ROWS).await {
                    Ok(n) if n > 0 => tracing::debug!(removed = n, "stored responses swept"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "stored responses could not be swept"),
                }
            });
        }
    }

    fn put_memory(&self, id: String, key_id: Option<String>, items: Vec<Value>) {
        let size: usize = items.iter().map(|v| serde_json::to_vec(v).map_or(0, |b| b.len())).sum();
        if size > MAX_STORED_BYTES {
            return;
        }
        let Ok(mut s) = self.inner.lock() else { return };
        while s.order.len() >= MAX_STORED || s.bytes + size > MAX_STORED_BYTES {
            let Some(old) = s.order.pop_front() else { break };
            if let Some(k) = s.map.remove(&old) {
                s.bytes -= k.size;
            }
        }
        s.bytes += size;
        s.order.push_back(id.clone());
        s.map.insert(id, Kept { items: Arc::new(items), size, key_id });
    }

    /// Number of responses kept in memory.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.map.len())
    }

    /// True when nothing is kept in memory.
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
    let previous_id = match req.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            return Err(GatewayError::invalid(
                "previous_response_id: must be a string",
                Some("previous_response_id".into()),
            ))
        }
    };
    let stores = req.get("store").and_then(Value::as_bool) != Some(false);
    // The key owns what it stores and may continue only its own conversations.
    let key_id = if previous_id.is_some() || stores { state.authenticate(&headers).await?.map(|k| k.id) } else { None };
    let history = match &previous_id {
        None => None,
        Some(id) => Some(lookup(&store, id, key_id.as_deref()).await?),
    };
    let t = wire::to_chat(&req, history.as_deref()).map_err(|e| GatewayError::invalid(e.to_string(), Some(e.param)))?;
    let history_len = history.as_ref().map_or(0, Vec::len);
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
            let new_items = items[history_len.min(items.len())..].to_vec();
            store.put(id, previous_id, key_id, &new_items, items).await;
        }
        let body = serde_json::to_vec(&r).unwrap_or_default();
        let mut out = Response::from_parts(parts, Body::from(body));
        out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(out);
    }
    let conv = StreamConverter::new(&id, created, &requested, t.echo.clone()).with_namespaces(t.namespaced);
    let keep = t.store.then(|| Keep { store, id, previous_id, key_id, items: t.items, history_len });
    let events = ResponsesStream { conv, buf: Vec::new(), started: false, done: false, keep, finished: false };
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
                    // Stored before the client sees `response.completed`, so that a request
                    // continuing it at once finds it.
                    if ev.finished {
                        ev.store().await;
                    }
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
    keep: Option<Keep>,
    /// The answer is complete (`[DONE]` seen).
    finished: bool,
}

/// A response to store once its stream is complete.
struct Keep {
    store: Arc<ResponseStore>,
    id: String,
    previous_id: Option<String>,
    key_id: Option<String>,
    /// The conversation so far (history, then this request's input).
    items: Vec<Value>,
    /// How many of `items` came from `previous_response_id`.
    history_len: usize,
}

/// The stored conversation of `previous_response_id`, or the 400 that explains why not.
async fn lookup(store: &ResponseStore, id: &str, key_id: Option<&str>) -> Result<Vec<Value>, GatewayError> {
    let param = Some("previous_response_id".to_owned());
    let kept = if store.is_persistent() {
        format!("Triage keeps responses in its database for {MAX_STORED_AGE_DAYS} days, the newest {MAX_STORED_ROWS} at most")
    } else {
        format!(
            "Triage keeps the last {MAX_STORED} responses in memory (no database is configured), none across restarts"
        )
    };
    match store.conversation(id, key_id).await {
        Ok(Lookup::Found(items)) => Ok(items),
        Ok(Lookup::Unknown) => Err(GatewayError::invalid(
            format!("previous_response_id: no response \"{id}\" is stored here for this key ({kept}, never those sent with store: false); send the whole conversation in input instead"),
            param,
        )),
        Ok(Lookup::Incomplete(missing)) => Err(GatewayError::invalid(
            format!("previous_response_id: the conversation of \"{id}\" is no longer complete (its earlier response \"{missing}\" was removed: {kept}); send the whole conversation in input instead"),
            param,
        )),
        Err(e) => {
            tracing::error!(error = %e, "stored responses could not be read");
            Err(GatewayError::invalid(
                format!("previous_response_id: the stored conversation of \"{id}\" could not be read; send the whole conversation in input instead"),
                param,
            ))
        }
    }
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
                    self.finished = true;
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

    async fn store(&mut self) {
        if let Some(k) = self.keep.take() {
            let mut items = k.items;
            items.extend(self.conv.output());
            let new_items = items[k.history_len.min(items.len())..].to_vec();
            k.store.put(k.id, k.previous_id, k.key_id, &new_items, items).await;
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
            s.put_memory(format!("resp_{i}"), None, vec![json!({"n": i})]);
        }
        assert_eq!(s.len(), MAX_STORED);
        let get = |id: &str| s.inner.lock().unwrap().map.get(id).map(|k| k.items.clone());
        assert!(get("resp_0").is_none() && get("resp_4").is_none());
        assert_eq!(get(&format!("resp_{}", MAX_STORED + 4)).unwrap()[0]["n"], MAX_STORED + 4);
    }
}
