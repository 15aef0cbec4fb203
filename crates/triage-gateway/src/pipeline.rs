//! The request pipeline shared by both client formats: read, parse, route, dispatch, respond.
//!
//! `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic) differ only in how
//! the body is parsed and how the answer and errors are written back; routing, fallback and
//! accounting are the same code, so every feature works whichever wire format came in.

use std::fmt::Write as _;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use triage_core::catalog::{DeploymentId, ModelId};
use triage_core::cost::TokenUsage;
use triage_core::route::{self, Requirements, RouteDecision, RouteError, Target};
use triage_core::tokens::PromptSize;
use triage_core::translate;

use crate::accounting::Accounting;
use crate::dispatch::{dispatch, Answer, Failed, PrimedStream};
use crate::error::GatewayError;
use crate::guarding;
use crate::inbound::{Format, Inbound};
use crate::providers::Completion;
use crate::relay::{AnthropicEncoder, Finisher, OpenAiEncoder, Relay};
use crate::request::{attempts_header, RouteInfo};
use crate::state::{AppState, InFlight, SharedState};
use crate::tokens::count_prompt;
use crate::{auth, budget};

/// Response header: the catalog model that served the request.
pub const HEADER_MODEL: &str = "x-triage-model";
/// Response header: its tier.
pub const HEADER_TIER: &str = "x-triage-tier";
/// Response header: why the router chose it.
pub const HEADER_REASON: &str = "x-triage-route-reason";
/// Request/response header: the request id (the client's, or a new UUID).
pub const HEADER_REQUEST_ID: &str = "x-request-id";
/// Response header: the kinds of sensitive content found (`email,aws_access_key`), never values.
pub const HEADER_SENSITIVITY: &str = "x-triage-sensitivity";
/// Response header: every upstream attempt, `model@provider:outcome`, comma-separated.
pub const HEADER_ATTEMPTS: &str = "x-triage-attempts";

/// Axum handler for `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Format::OpenAi).await
}

/// Axum handler for `POST /v1/messages`.
pub async fn messages(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Format::Anthropic).await
}

/// Axum handler for `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, estimated with the
/// same tokenizer the router uses (o200k_base; Anthropic's own count may differ slightly). The key
/// is checked before the body is read ([`crate::http::access`]); the count runs off the async
/// workers and tokenises at most `server.max_tokenize_bytes` ([`count_prompt`]).
pub async fn count_tokens(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_body(&headers, body, state.catalog.server()).await?;
        // count_tokens takes a Messages request without max_tokens.
        let mut v: serde_json::Value = crate::inbound::parse_json(&bytes)?;
        drop(bytes);
        if let Some(o) = v.as_object_mut() {
            o.entry("max_tokens").or_insert(1.into());
        }
        let native: triage_core::anthropic::MessagesRequest = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            GatewayError::invalid(format!("{path}: {}", e.inner()), Some(path))
        })?;
        if native.messages.is_empty() {
            return Err(GatewayError::invalid("messages: must contain at least one message", Some("messages".into())));
        }
        let openai = translate::anthropic_to_openai(&native);
        drop(native);
        let size = PromptSize::new(&openai);
        count_prompt(&state.count_slots, &size).await;
        let tokens = size.estimate();
        Ok::<_, GatewayError>(axum::Json(serde_json::json!({"input_tokens": tokens})).into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response_for(Format::Anthropic))
}

pub(crate) async fn handle(state: SharedState, headers: HeaderMap, body: Body, format: Format) -> Response {
    let mut acct = Accounting {
        state: state.clone(),
        request_id: request_id(&headers),
        started: Instant::now(),
        started_ms: triage_store::now_ms(),
        format,
        key: None,
        requested_model: String::new(),
        stream: false,
        reservation: triage_store::Reservation::none(),
        prompt_estimate: 0,
        score: None,
        sensitivity: None,
        done: false,
        shadow: None,
        dispatched: None,
    };
    let request_id = acct.request_id.clone();
    let mut route: Option<RouteInfo> = None;
    let in_flight = InFlight::new(state.clone());
    let mut sensitivity: Option<String> = None;
    let result = tokio::select! {
        r = serve(&state, &headers, body, &mut route, &mut acct, in_flight, &mut sensitivity) => r,
        _ = state.stopped() => Err(GatewayError::ShuttingDown),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let status = e.status();
            acct.finish(route.as_ref(), status.as_str(), None, 0, None);
            e.into_response_for(format)
        }
    };
    set_route_headers(resp.headers_mut(), &state, &request_id, route.as_ref());
    if let Some(v) = sensitivity.and_then(|s| HeaderValue::from_str(&s).ok()) {
        resp.headers_mut().insert(NAME_SENSITIVITY, v);
    }
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

// The header names as `HeaderName`s: inserting a `&str` name copies it into a new buffer.
const NAME_MODEL: HeaderName = HeaderName::from_static(HEADER_MODEL);
const NAME_TIER: HeaderName = HeaderName::from_static(HEADER_TIER);
const NAME_REASON: HeaderName = HeaderName::from_static(HEADER_REASON);
const NAME_REQUEST_ID: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);
const NAME_SENSITIVITY: HeaderName = HeaderName::from_static(HEADER_SENSITIVITY);
const NAME_ATTEMPTS: HeaderName = HeaderName::from_static(HEADER_ATTEMPTS);

fn set_route_headers(h: &mut HeaderMap, state: &SharedState, request_id: &str, d: Option<&RouteInfo>) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(NAME_REQUEST_ID, v);
    }
    if let Some(d) = d {
        let c = &state.catalog;
        for (name, value) in [
            (NAME_MODEL, c.models()[d.model].id.as_str()),
            (NAME_TIER, c.tiers()[d.tier].as_str()),
            (NAME_REASON, d.reason.as_str()),
            (NAME_ATTEMPTS, attempts_header(&state.catalog, &d.attempts).as_str()),
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
    route_out: &mut Option<RouteInfo>,
    acct: &mut Accounting,
    in_flight: InFlight,
    sensitivity_out: &mut Option<String>,
) -> Result<Response, GatewayError> {
    let key = state.authenticate(headers).await?;
    acct.key.clone_from(&key);
    let bytes = read_body(headers, body, state.catalog.server()).await?;
    let mut inbound = Inbound::parse(acct.format, &bytes)?;
    inbound.anthropic_headers = crate::inbound::anthropic_headers(headers);
    acct.requested_model.clone_from(&inbound.openai.model);
    acct.stream = inbound.stream;
    let catalog = &state.catalog;
    let sensitivity = match &state.guard {
        Some(g) => guarding::apply(state, g, &mut inbound, key.as_ref().map(|k| (k.id.as_str(), k.team.as_str())))?,
        None => Default::default(),
    };
    if !sensitivity.kinds.is_empty() {
        acct.sensitivity = Some(sensitivity.names());
        *sensitivity_out = Some(sensitivity.names());
    }
    let local_only = sensitivity.local_only;
    let key_ref = key.as_ref();
    let is_local = |m: ModelId| catalog.provider_of(m).local;
    let allowed = |m: ModelId| auth::allowed(catalog, key_ref, m) && (!local_only || is_local(m));
    let available =
        |m: ModelId| allowed(m) && if local_only { state.model_available_or_busy(m) } else { state.model_available(m) };
    let (decision, plan, needs, prompt_estimate, reservation, score) = {
        let mut target = route::resolve(catalog, &inbound.openai.model)?;
        if local_only {
            // Sensitive content overrides the requested model or tier: any capable local model.
            target = Target::Auto;
        }
        let requirements = Requirements::of(&inbound.openai);
        // An Anthropic stream shows the exact count in `message_start`; a prompt whose byte
        // bound does not fit the smallest window is counted by routing. Load the tokenizer's
        // tables off the async workers first (once per process; most requests never need it).
        let smallest_window = catalog.models().iter().map(|m| m.context_window).min().unwrap_or(u64::MAX);
        if (acct.format == Format::Anthropic && inbound.stream)
            || requirements.prompt.fit_needs_count(requirements.output_tokens, smallest_window)
        {
            count_prompt(&state.count_slots, &requirements.prompt).await;
        }
        if let Target::Model { model, .. } = &target {
            if !allowed(*model) {
                return Err(GatewayError::Forbidden(format!(
                    "this key may not use model {} (tier {})",
                    catalog.models()[*model].id,
                    catalog.tiers()[catalog.models()[*model].tier]
                )));
            }
        }
        let routed = match target {
            Target::Auto if local_only => route::select(catalog, &target, &requirements, available).map(|mut d| {
                d.reason = format!("sensitive content ({}): local models only; {}", sensitivity.names(), d.reason);
                (d, None)
            }),
            Target::Auto => {
                let mut scored = match state.router.get() {
                    Some(r) => {
                        crate::scoring::decide(&r, &state.scoring_slots, &inbound.openai, catalog.tiers().len()).await
                    }
                    None => None,
                };
                // Sticky routing: a conversation never drops below the highest tier it reached.
                let mut stuck_from = None;
                if let (Some(d), Some(sticky), Some(key)) = (
                    scored.as_mut(),
                    state.sticky.as_ref(),
                    triage_core::router::choice::conversation_key(&inbound.openai),
                ) {
                    let follow_up =
                        inbound.openai.messages.iter().any(|m| m.role == triage_core::openai::Role::Assistant);
                    let (tier, stuck) = sticky.apply(key, d.tier, follow_up, std::time::Instant::now());
                    if stuck {
                        stuck_from = Some(d.tier);
                        d.tier = tier;
                    }
                }
                route_auto(state, scored, &requirements, &available).map(|(mut dec, score)| {
                    if let Some(own) = stuck_from {
                        dec.reason = format!(
                            "sticky: this conversation was routed to tier {} before, so it stays there (this turn alone scored tier {}); {}",
                            catalog.tiers()[dec.tier.min(catalog.tiers().len().saturating_sub(1))],
                            catalog.tiers()[own.min(catalog.tiers().len().saturating_sub(1))],
                            dec.reason
                        );
                    }
                    (dec, score)
                })
            }
            _ => route::select(catalog, &target, &requirements, available).map(|d| (d, None)),
        };
        // Nothing available: a provider that only failed its reachability probe is still tried
        // rather than answering 503 without calling anyone (issue 19).
        let routed = match routed {
            Err(RouteError::Unavailable { .. }) if !local_only => {
                let loose = |m: ModelId| allowed(m) && state.model_available_last_resort(m);
                route::select(catalog, &target, &requirements, loose).map(|d| (d, None))
            }
            r => r,
        };
        let (decision, score) = routed.map_err(|e| match e {
            _ if local_only => GatewayError::SensitiveNeedsLocal(sensitivity.names()),
            // A restricted key: what is down or unable may be all this key is allowed, so the
            // answer names the restriction (403) with the reason, not a bare 400/503.
            RouteError::Unavailable { .. } | RouteError::Unsatisfiable { .. }
                if key_ref.is_some_and(|k| !k.tiers.is_empty() || !k.models.is_empty()) =>
            {
                GatewayError::Forbidden(format!("no model this key may use can serve this request ({e})"))
            }
            e => e.into(),
        })?;
        *route_out = Some(RouteInfo::routed(&decision));
        let (decision, reservation, stepped) =
            budget::admit(state, &acct.request_id, key_ref, &target, decision, &requirements, &available).await?;
        if stepped {
            *route_out = Some(RouteInfo::routed(&decision));
        }
        // A request stepped down for budget reasons never falls back to a dearer tier.
        let plan_target = if stepped { Target::Tier(decision.tier) } else { target };
        let mut plan = route::plan(catalog, &plan_target, &decision, &requirements);
        plan.retain(|c| allowed(catalog.deployments()[c.deployment].model));
        // Tokenise only where the count is shown to the client (an Anthropic stream's
        // `message_start`); elsewhere it only backs a flagged estimate when no usage comes.
        let estimate = if acct.format == Format::Anthropic && inbound.stream {
            requirements.prompt.estimate()
        } else {
            requirements.prompt.cheap_estimate()
        };
        (decision, plan, requirements.needs(), estimate, reservation, score)
    };
    acct.reservation = reservation;
    acct.prompt_estimate = prompt_estimate;
    acct.score = score;
    // Production evaluation: a sampled request carries a ticket; its release queues the job once
    // the client has the whole answer.
    let release = state.evals.as_ref().and_then(|shadow| {
        let sender = [
            key_ref.map(|k| k.id.as_str()),
            key_ref.map(|k| k.user.as_str()),
            key_ref.map(|k| k.team.as_str()),
            inbound.openai.model.strip_prefix("role:"),
        ];
        let (ticket, release) = shadow.sample(catalog, &inbound.openai, !sensitivity.kinds.is_empty(), sender)?;
        acct.shadow = Some(ticket);
        Some(release)
    });

    let typed = |kind, d: DeploymentId| {
        let mut p = route::typed_plan(catalog, catalog.deployments()[d].model, kind, needs);
        p.retain(|c| allowed(catalog.deployments()[c.deployment].model));
        p
    };
    acct.dispatched = Some(RouteInfo::routed(&decision));
    let served = match dispatch(state, &mut inbound, plan, typed, acct.started).await {
        Ok(s) => s,
        Err(Failed { error, attempts }) => {
            if let Some(r) = route_out.as_mut() {
                r.attempts = attempts;
            }
            return Err(error);
        }
    };
    let model = catalog.deployments()[served.deployment].model;
    let mut reason = decision.reason;
    let failed = served.attempts.len() - 1;
    if failed > 0 {
        let _ = write!(reason, "; served by {} after {failed} failed attempt(s)", catalog.models()[model].id);
    }
    let info = RouteInfo { model, tier: catalog.models()[model].tier, reason, attempts: served.attempts };
    *route_out = Some(info.clone());

    let acct = std::mem::replace(acct, acct.detached());
    let served_local = catalog.providers()[catalog.deployments()[served.deployment].provider].local;
    let restore = inbound.redaction_for(served_local);
    match served.answer {
        Answer::Complete(mut completion) => {
            if let Some(r) = &restore {
                match &mut completion {
                    Completion::OpenAi(c) => guarding::restore_openai(c, r),
                    Completion::Anthropic(a) => guarding::restore_anthropic(a, r),
                }
            }
            let mut acct = acct;
            if let Some(t) = acct.shadow.as_mut() {
                t.set_answer(&completion);
            }
            let resp = complete_response(completion, &info, acct);
            Ok(match release {
                Some(r) => resp.map(|body| crate::shadow::with_release(body, r)),
                None => resp,
            })
        }
        Answer::Stream(PrimedStream { stream, held, ended }) => {
            let format = acct.format;
            let ctx = Finisher::new(acct, info, served.deployment, in_flight).with_release(release);
            let restore = restore.map(guarding::StreamRestore::new);
            let body = match format {
                Format::OpenAi => {
                    Relay::new(stream, held, ended, OpenAiEncoder::new(inbound.wants_stream_usage), ctx, restore)
                        .into_body()
                }
                Format::Anthropic => {
                    // `message_start` needs input tokens before an OpenAI upstream reports them.
                    Relay::new(stream, held, ended, AnthropicEncoder::new(prompt_estimate), ctx, restore).into_body()
                }
            };
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            Ok(resp)
        }
    }
}

/// `model: "auto"`: the difficulty router's tier (`scored`, from [`crate::scoring::decide`]), or
/// the next dearer one when nothing in it can serve the request; without a decision (or when no
/// tier from the router's up can serve), the cheapest capable tier. Returns the decision and the
/// router's score.
fn route_auto(
    state: &AppState,
    scored: Option<triage_core::router::Decision>,
    requirements: &Requirements<'_>,
    available: &impl Fn(ModelId) -> bool,
) -> Result<(RouteDecision, Option<f64>), RouteError> {
    let catalog = &state.catalog;
    let Some(d) = scored else {
        return route::select(catalog, &Target::Auto, requirements, available).map(|d| (d, None));
    };
    let n = catalog.tiers().len();
    for t in d.tier..n {
        if let Ok(mut dec) = route::select(catalog, &Target::Tier(t), requirements, available) {
            // "auto: score S vs thresholds T1/T2 -> tier X[ (nothing in tier Y can serve it)],
            // cheapest model M; SUMMARY", written into one buffer.
            let summary = d.reason.summary();
            let mut reason = String::with_capacity(128 + summary.len());
            let _ = write!(reason, "auto: score {:.3} vs thresholds ", d.score);
            for (i, th) in d.thresholds.iter().enumerate() {
                let _ = write!(reason, "{}{th:.3}", if i == 0 { "" } else { "/" });
            }
            let _ = write!(reason, " -> tier {}", catalog.tiers()[t]);
            if t != d.tier {
                let _ = write!(reason, " (nothing in tier {} can serve it)", catalog.tiers()[d.tier]);
            }
            let _ = write!(reason, ", cheapest model {}; {summary}", catalog.models()[dec.model].id);
            dec.reason = reason;
            return Ok((dec, Some(f64::from(d.score))));
        }
    }
    route::select(catalog, &Target::Auto, requirements, available).map(|mut dec| {
        dec.reason = format!(
            "{} (the scorer chose tier {} at score {:.3}; nothing from there up can serve it)",
            dec.reason,
            catalog.tiers()[d.tier],
            d.score
        );
        (dec, Some(f64::from(d.score)))
    })
}

/// Reads the whole body, refusing more than `server.max_body_bytes`: at once when
/// `content-length` says so, else as soon as the limit is crossed (`http_body_util::Limited`,
/// whose typed error is recognised), so memory stays bounded either way; a body that has not
/// arrived whole within `server.body_read_timeout_ms` is a 408.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    server: &triage_core::catalog::ServerSettings,
) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let limit = server.max_body_bytes;
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let timeout = server.body_read_timeout;
    match tokio::time::timeout(timeout, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(GatewayError::PayloadTooLarge { limit })
        }
        Ok(Err(e)) => Err(GatewayError::invalid(format!("could not read the request body: {e}"), None)),
        Err(_) => Err(GatewayError::BodyTimeout { ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) }),
    }
}

fn complete_response(completion: Completion, info: &RouteInfo, acct: Accounting) -> Response {
    let format = acct.format;
    let usage = match &completion {
        Completion::OpenAi(c) => c.usage.as_ref().map(TokenUsage::from_openai),
        Completion::Anthropic(r) => Some(TokenUsage::from_anthropic(&r.usage)),
    };
    let body = match (format, completion) {
        (Format::OpenAi, Completion::OpenAi(mut c)) => {
            for choice in &mut c.choices {
                // Shared case C11: tool calls reported with `finish_reason: "stop"` end as `tool_calls`.
                let has_calls = choice.message.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
                if has_calls && choice.finish_reason.as_deref() == Some("stop") {
                    choice.finish_reason = Some("tool_calls".to_owned());
                }
            }
            serde_json::to_vec(&c)
        }
        (Format::OpenAi, Completion::Anthropic(r)) => serde_json::to_vec(&translate::anthropic_to_openai_response(&r)),
        (Format::Anthropic, Completion::Anthropic(r)) => serde_json::to_vec(&r),
        (Format::Anthropic, Completion::OpenAi(c)) => serde_json::to_vec(&translate::openai_to_anthropic_response(&c)),
    };
    acct.finish(Some(info), "200", usage, 0, None);
    match body {
        Ok(body) => (StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            GatewayError::invalid(format!("the answer cannot be serialized: {e}"), None).into_response_for(format)
        }
    }
}
