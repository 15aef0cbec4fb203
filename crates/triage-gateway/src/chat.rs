//! `POST /v1/chat/completions`: parse, route, call the upstream, relay the answer.
//!
//! The handler unpacks the request and calls plain functions in the order of DESIGN.md's request
//! flow. A streamed answer is relayed read by read as it arrives (never buffered whole), through
//! the [`ChunkNormalizer`]; the client's disconnect drops the relay and with it the upstream
//! connection, which cancels the upstream request.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use triage_core::catalog::{DeploymentId, ModelId, TierId};
use triage_core::cost::TokenUsage;
use triage_core::openai::{ChatCompletion, ChatRequest, Usage};
use triage_core::route::{self, Requirements, RouteDecision};
use triage_core::sse;
use triage_core::stream::ChunkNormalizer;

use crate::dispatch::{attempts_header, dispatch, Answer, Failed, PrimedStream};
use crate::error::GatewayError;
use crate::providers::{Batch, ChunkStream, StreamItem, UpstreamError};
use crate::state::SharedState;

/// Response header: the catalog model that served the request.
pub const HEADER_MODEL: &str = "x-triage-model";
/// Response header: its tier.
pub const HEADER_TIER: &str = "x-triage-tier";
/// Response header: why the router chose it.
pub const HEADER_REASON: &str = "x-triage-route-reason";
/// Request/response header: the request id (the client's, or a new UUID).
pub const HEADER_REQUEST_ID: &str = "x-request-id";
/// Response header: every upstream attempt, `model@provider:outcome`, comma-separated.
pub const HEADER_ATTEMPTS: &str = "x-triage-attempts";

/// What the response headers report: the model that answered (or was routed to, on failure).
#[derive(Debug, Clone)]
struct RouteInfo {
    model: ModelId,
    tier: TierId,
    reason: String,
    attempts: Option<String>,
}

impl RouteInfo {
    fn routed(d: &RouteDecision) -> Self {
        RouteInfo { model: d.model, tier: d.tier, reason: d.reason.clone(), attempts: None }
    }
}

/// Axum handler for `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let request_id = request_id(&headers);
    let mut route: Option<RouteInfo> = None;
    let mut resp = match serve(&state, &headers, body, started, &request_id, &mut route).await {
        Ok(r) => r,
        Err(e) => {
            let status = e.status();
            record_request(&state, route.as_ref().map(|r| (r.model, r.tier)), status.as_str(), started);
            e.into_response()
        }
    };
    set_route_headers(resp.headers_mut(), &state, &request_id, route.as_ref());
    resp
}

/// The client's `x-request-id` if it is a sane header value (≤ 128 visible ASCII), else a new UUID.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(HEADER_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn set_route_headers(h: &mut HeaderMap, state: &SharedState, request_id: &str, d: Option<&RouteInfo>) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HEADER_REQUEST_ID, v);
    }
    if let Some(d) = d {
        let c = &state.catalog;
        for (name, value) in [
            (HEADER_MODEL, c.models()[d.model].id.as_str()),
            (HEADER_TIER, c.tiers()[d.tier].as_str()),
            (HEADER_REASON, d.reason.as_str()),
            (HEADER_ATTEMPTS, d.attempts.as_deref().unwrap_or_default()),
        ] {
            if value.is_empty() {
                continue;
            }
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
    }
}

async fn serve(
    state: &SharedState,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    request_id: &str,
    route_out: &mut Option<RouteInfo>,
) -> Result<Response, GatewayError> {
    let bytes = read_body(headers, body, state.catalog.server().max_body_bytes).await?;
    let mut req = parse_request(&bytes)?;
    let catalog = &state.catalog;
    let (decision, plan, needs) = {
        let target = route::resolve(catalog, &req.model)?;
        let requirements = Requirements::of(&req);
        let decision = route::select(catalog, &target, &requirements, |m| state.model_available(m))?;
        let plan = route::plan(catalog, &target, &decision, &requirements);
        (decision, plan, requirements.needs())
    };
    *route_out = Some(RouteInfo::routed(&decision));

    let stream = req.is_stream();
    let client_wants_usage = req.wants_stream_usage();
    if stream {
        // Triage always needs usage for its own accounting; the client sees it only if it asked.
        req.stream_options.get_or_insert_with(Default::default).include_usage = Some(true);
    }
    let typed = |kind, d: DeploymentId| route::typed_plan(catalog, catalog.deployments()[d].model, kind, needs);
    let served = match dispatch(state, &mut req, plan, typed, started).await {
        Ok(s) => s,
        Err(Failed { error, attempts }) => {
            if let Some(r) = route_out.as_mut() {
                r.attempts = Some(attempts_header(state, &attempts));
            }
            return Err(error);
        }
    };
    let model = catalog.deployments()[served.deployment].model;
    let mut reason = decision.reason.clone();
    let failed = served.attempts.len() - 1;
    if failed > 0 {
        reason.push_str(&format!("; served by {} after {failed} failed attempt(s)", catalog.models()[model].id));
    }
    let info = RouteInfo {
        model,
        tier: catalog.models()[model].tier,
        reason,
        attempts: Some(attempts_header(state, &served.attempts)),
    };
    *route_out = Some(info.clone());

    match served.answer {
        Answer::Complete(completion) => Ok(complete_response(state, completion, &info, started, request_id)),
        Answer::Stream(PrimedStream { stream: upstream, held, ended }) => {
            let relay = Relay {
                upstream,
                normalizer: ChunkNormalizer::new(client_wants_usage),
                items: held,
                first: Some(ended.unwrap_or(Batch::More)),
                ended: false,
                ctx: Finisher {
                    state: state.clone(),
                    info,
                    deployment: served.deployment,
                    started,
                    request_id: request_id.to_owned(),
                    first_chunk: None,
                    recorded: false,
                },
            };
            let body = futures_util::stream::unfold(relay, |mut r| async move {
                r.next_bytes().await.map(|b| (Ok::<_, Infallible>(b), r))
            });
            let mut resp = Response::new(Body::from_stream(body));
            let h = resp.headers_mut();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            Ok(resp)
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes: at once when `content-length` says
/// so, else as soon as the limit is crossed (memory stays bounded either way).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_large {
            GatewayError::PayloadTooLarge { limit }
        } else {
            GatewayError::invalid(format!("could not read the request body: {e}"), None)
        }
    })
}

/// Parses and validates a Chat Completions body. Errors name the field at fault.
pub fn parse_request(bytes: &[u8]) -> Result<ChatRequest, GatewayError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let req: ChatRequest = serde_path_to_error_deserialize(de)?;
    de.end().map_err(|e| GatewayError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    if req.model.is_empty() {
        return Err(GatewayError::invalid("model: must not be empty", Some("model".into())));
    }
    if req.messages.is_empty() {
        return Err(GatewayError::invalid("messages: must contain at least one message", Some("messages".into())));
    }
    Ok(req)
}

fn serde_path_to_error_deserialize(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> Result<ChatRequest, GatewayError> {
    use serde_json::error::Category;
    serde_path_to_error::deserialize(de).map_err(|e| {
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
    })
}

fn complete_response(
    state: &SharedState,
    mut completion: ChatCompletion,
    info: &RouteInfo,
    started: Instant,
    request_id: &str,
) -> Response {
    for choice in &mut completion.choices {
        // Shared case C11: tool calls reported with `finish_reason: "stop"` end as `tool_calls`.
        let has_calls = choice.message.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        if has_calls && choice.finish_reason.as_deref() == Some("stop") {
            choice.finish_reason = Some("tool_calls".to_owned());
        }
    }
    record_usage(state, info.model, completion.usage.as_ref(), request_id);
    record_request(state, Some((info.model, info.tier)), "200", started);
    match serde_json::to_vec(&completion) {
        Ok(body) => (StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => GatewayError::Upstream {
            provider: state.catalog.provider_of(info.model).name.clone(),
            source: UpstreamError::Protocol(e.to_string()),
        }
        .into_response(),
    }
}

fn record_request(state: &SharedState, d: Option<(ModelId, TierId)>, status: &str, started: Instant) {
    let (model, tier) = match d {
        Some((m, t)) => (state.catalog.models()[m].id.clone(), state.catalog.tiers()[t].clone()),
        None => ("none".to_owned(), "none".to_owned()),
    };
    let secs = started.elapsed().as_secs_f64();
    metrics::histogram!("triage_request_duration_seconds", "model" => model.clone(), "tier" => tier.clone())
        .record(secs);
    metrics::counter!("triage_requests_total", "endpoint" => "chat_completions", "model" => model.clone(), "tier" => tier.clone(), "status" => status.to_owned()).increment(1);
    tracing::info!(model = %model, tier = %tier, status, latency_ms = secs * 1000.0, "chat completion");
}

fn record_usage(state: &SharedState, model: ModelId, usage: Option<&Usage>, request_id: &str) {
    let m = &state.catalog.models()[model];
    match usage {
        Some(u) => {
            let tokens = TokenUsage::from_openai(u);
            let cost = m.price.cost(&tokens);
            metrics::counter!("triage_tokens_total", "model" => m.id.clone(), "kind" => "input")
                .increment(tokens.input);
            metrics::counter!("triage_tokens_total", "model" => m.id.clone(), "kind" => "output")
                .increment(tokens.output);
            tracing::info!(request_id, model = %m.id, input = tokens.input, cached = tokens.cached_input, output = tokens.output, reasoning = tokens.reasoning, cost_usd = %cost, "usage");
        }
        None => tracing::warn!(request_id, model = %m.id, "the upstream reported no usage"),
    }
}

/// Per-stream bookkeeping; records the outcome exactly once, `cancelled` if the client left.
struct Finisher {
    state: SharedState,
    info: RouteInfo,
    deployment: DeploymentId,
    started: Instant,
    request_id: String,
    first_chunk: Option<Instant>,
    recorded: bool,
}

impl Finisher {
    fn first_chunk(&mut self) {
        if self.first_chunk.is_none() {
            self.first_chunk = Some(Instant::now());
            let c = &self.state.catalog;
            metrics::histogram!("triage_ttft_seconds", "model" => c.models()[self.info.model].id.clone(), "tier" => c.tiers()[self.info.tier].clone())
                .record(self.started.elapsed().as_secs_f64());
        }
    }

    fn finish(&mut self, status: &str, usage: Option<&Usage>) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        record_usage(&self.state, self.info.model, usage, &self.request_id);
        record_request(&self.state, Some((self.info.model, self.info.tier)), status, self.started);
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if !self.recorded {
            tracing::info!(request_id = %self.request_id, "client disconnected; upstream request cancelled");
            self.recorded = true;
            record_request(&self.state, Some((self.info.model, self.info.tier)), "cancelled", self.started);
        }
    }
}

/// Relays one upstream stream to an OpenAI client.
struct Relay {
    upstream: ChunkStream,
    normalizer: ChunkNormalizer,
    /// Items decoded but not yet sent (at first: those held back while priming).
    items: Vec<StreamItem>,
    /// How priming's last read ended; consumed before reading on.
    first: Option<Batch>,
    ended: bool,
    ctx: Finisher,
}

impl Relay {
    /// The bytes of the next network read, normalised and re-framed; `None` after the end.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            let batch = match self.first.take() {
                Some(b) => b,
                None => self.upstream.next_batch(&mut self.items).await,
            };
            let mut buf = Vec::new();
            for item in self.items.drain(..) {
                match item {
                    StreamItem::Chunk(c) => {
                        if let Some(c) = self.normalizer.push(c) {
                            self.ctx.first_chunk();
                            if let Ok(json) = serde_json::to_vec(&c) {
                                sse::write_data(&mut buf, &json);
                            }
                        }
                    }
                    StreamItem::Done => self.normalizer.upstream_done(),
                }
            }
            match batch {
                Batch::More if buf.is_empty() => continue,
                Batch::More => return Some(buf.into()),
                Batch::End => {
                    let failure = (!self.normalizer.finished()).then_some(UpstreamError::Truncated);
                    self.end(&mut buf, failure);
                    return Some(buf.into());
                }
                Batch::Failed(e) => {
                    // An upstream that finished every choice and then stalls or breaks before
                    // `[DONE]` has still delivered a whole answer.
                    let failure = (!self.normalizer.finished()).then_some(e);
                    self.end(&mut buf, failure);
                    return Some(buf.into());
                }
            }
        }
    }

    /// Ends the stream: cleanly with the usage chunk (if asked) and one `[DONE]`, or with one
    /// well-formed error event and no `[DONE]` (shared cases C04, C25).
    fn end(&mut self, buf: &mut Vec<u8>, failure: Option<UpstreamError>) {
        self.ended = true;
        match failure {
            None => {
                if let Some(chunk) = self.normalizer.usage_chunk() {
                    if let Ok(json) = serde_json::to_vec(&chunk) {
                        sse::write_data(buf, &json);
                    }
                }
                sse::write_data(buf, b"[DONE]");
                self.ctx.finish("200", self.normalizer.usage());
            }
            Some(source) => {
                // A stream that breaks after its first token is the deployment's failure.
                self.ctx.state.record_failure(self.ctx.deployment);
                let d = &self.ctx.state.catalog.deployments()[self.ctx.deployment];
                let provider = self.ctx.state.catalog.providers()[d.provider].name.clone();
                tracing::warn!(request_id = %self.ctx.request_id, provider = %provider, error = %source, "upstream stream failed");
                let err = GatewayError::Upstream { provider, source };
                sse::write_data(buf, &err.to_sse_json());
                self.ctx.finish("stream_error", self.normalizer.usage());
            }
        }
    }
}
