//! The route table, and the small read-only endpoints.
//!
//! - `POST /v1/chat/completions` (also without the `/v1` prefix), `POST /v1/messages` and
//!   `POST /v1/messages/count_tokens`: [`crate::pipeline`];
//! - `POST /v1/responses` (OpenAI Responses API): [`crate::responses`], through the same pipeline;
//! - `GET /v1/models`: tiers, roles, aliases and models in OpenAI's list format;
//! - `GET /healthz`: the process is up; `GET /readyz`: some model can take calls now;
//! - `GET /v1/health/deployments`: breaker state, latency and error rate per deployment;
//! - `GET /v1/spend`: the spend report (admin key when `auth = "keys"`);
//! - `POST /v1/feedback` and `GET /v1/evals` (admin): [`crate::evals::http`];
//! - `GET /metrics`: Prometheus text format.
//!
//! With `auth = "keys"`, every endpoint but `GET /healthz` needs a key; `[server.access]` may
//! open `count_tokens`, `/v1/models` and the operational endpoints (`/readyz`, `/metrics`,
//! `/v1/health/deployments`) to anyone or close them to all but admin keys. The check
//! ([`access`]) runs before the handler reads a byte of the body.

use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use triage_core::catalog::AliasTarget;
use triage_core::catalog::{Access, AuthMode, Endpoint};
use triage_core::openai::{ErrorBody, ErrorEnvelope};

use crate::error::GatewayError;
use crate::pipeline::{chat_completions, count_tokens, messages};
use crate::state::SharedState;
use crate::telemetry;

/// The gateway's HTTP application (testable without a socket via `tower::ServiceExt::oneshot`).
pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/responses", post(crate::responses::create).get(crate::responses::refuse_get))
        .route("/responses", post(crate::responses::create).get(crate::responses::refuse_get))
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/v1/health/deployments", get(deployments))
        .route("/v1/spend", get(spend))
        .route("/v1/feedback", post(crate::evals::http::feedback))
        .route("/v1/evals", get(crate::evals::http::report))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::Extension(std::sync::Arc::new(crate::responses::ResponseStore::with_database(
            state.store.clone(),
        ))))
        .layer(axum::middleware::from_fn_with_state(state.clone(), access))
        .with_state(state)
}

/// Applies `[server.access]` to the endpoints it names (see the module docs): 401 without a
/// valid key, 403 without an admin key where one is needed, before the handler runs. Other
/// paths pass through (their handlers authenticate first thing).
pub async fn access(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if state.catalog.auth() == AuthMode::Keys {
        if let Some(endpoint) = Endpoint::of_path(req.uri().path()) {
            let level = state.catalog.server().access.get(&endpoint).copied().unwrap_or(Access::Key);
            let format = if endpoint == Endpoint::CountTokens {
                crate::inbound::Format::Anthropic
            } else {
                crate::inbound::Format::OpenAi
            };
            if level != Access::Public {
                match state.authenticate(req.headers()).await {
                    Err(e) => return e.into_response_for(format),
                    Ok(k) if level == Access::Admin && !k.as_ref().is_some_and(|k| k.admin) => {
                        return GatewayError::Forbidden(format!("{} needs an admin key", req.uri().path()))
                            .into_response_for(format)
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    next.run(req).await
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let body = ErrorEnvelope {
        error: ErrorBody {
            message: format!("no route for {}", uri.path()),
            kind: "invalid_request_error".into(),
            param: None,
            code: Some("not_found".into()),
        },
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn metrics(State(state): State<SharedState>) -> Response {
    // The recorder first: series recorded before it is installed would be lost.
    let handle = telemetry::handle();
    telemetry::record_local_engines(&state.catalog, &state.providers);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

/// 200 when at least one model's provider can take calls, else 503; the body lists providers.
async fn readyz(State(state): State<SharedState>) -> Response {
    let providers: Vec<Value> = state
        .catalog
        .providers()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let why = state.provider_unavailable(i);
            json!({"provider": p.name, "available": why.is_none(), "reason": why})
        })
        .collect();
    let ready = (0..state.catalog.models().len()).any(|m| state.model_available(m));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready, "providers": providers}))).into_response()
}

/// Query of `GET /v1/spend`.
#[derive(Debug, serde::Deserialize)]
struct SpendQuery {
    by: Option<String>,
    since: Option<String>,
}

/// `GET /v1/spend?by=day|user|team|tier|model&since=YYYY-MM-DD`: the spend report as JSON
/// (requests, tokens, cost, the "always frontier" cost and the saving, requests per tier). With
/// `auth = "keys"` it needs an admin key.
async fn spend(State(state): State<SharedState>, headers: HeaderMap, Query(q): Query<SpendQuery>) -> Response {
    let result = async {
        if state.catalog.auth() == triage_core::catalog::AuthMode::Keys {
            let key = state.authenticate(&headers).await?;
            if !key.is_some_and(|k| k.admin) {
                return Err(GatewayError::Forbidden("the spend report needs an admin key".into()));
            }
        }
        let Some(store) = &state.store else {
            return Err(GatewayError::invalid("no ledger: set [spend] database in the config", None));
        };
        let by = match q.by.as_deref() {
            None => triage_store::GroupBy::Day,
            Some(b) => triage_store::GroupBy::parse(b).ok_or_else(|| {
                GatewayError::invalid(format!("by: \"{b}\" is not day, user, team, tier or model"), Some("by".into()))
            })?,
        };
        // Rows are written in the background; include every request answered so far.
        if let Some(l) = &state.ledger {
            l.flush().await;
        }
        let report = triage_store::Report::build(store, by, q.since.as_deref()).await.map_err(|e| {
            tracing::error!(error = %e, "spend report failed");
            GatewayError::BudgetStore
        })?;
        Ok(Json(report.to_json()).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/health/deployments`: each deployment's breaker state, cooldown, recent latency
/// (an exponentially weighted mean to response headers) and error rate.
async fn deployments(State(state): State<SharedState>) -> Json<Value> {
    let list: Vec<Value> = (0..state.catalog.deployments().len()).map(|d| state.deployment_report(d)).collect();
    Json(json!({"deployments": list}))
}

/// `GET /v1/models`: every name a client may send as `model`, with Triage's details under `triage`.
async fn list_models(State(state): State<SharedState>) -> Json<Value> {
    let c = &state.catalog;
    let entry = |id: String, detail: Value| json!({"id": id, "object": "model", "created": 0, "owned_by": "triage", "triage": detail});
    let mut data = vec![entry("auto".into(), json!({"kind": "router", "tiers": c.tiers()}))];
    for t in c.tiers() {
        data.push(entry(t.clone(), json!({"kind": "tier"})));
    }
    for (role, &tier) in c.roles() {
        data.push(entry(format!("role:{role}"), json!({"kind": "role", "tier": c.tiers()[tier]})));
    }
    let target = |t: &AliasTarget| match t {
        AliasTarget::Model(m) => json!({"model": c.models()[*m].id}),
        AliasTarget::Tier(t) => json!({"tier": c.tiers()[*t]}),
        AliasTarget::Role(r, t) => json!({"role": r, "tier": c.tiers()[*t]}),
        AliasTarget::Auto => json!({"router": "auto"}),
    };
    for (alias, t) in c.aliases() {
        let mut detail = target(t);
        detail["kind"] = json!("alias");
        data.push(entry(alias.clone(), detail));
    }
    for (i, m) in c.models().iter().enumerate() {
        let caps: Vec<&str> = [
            ("tools", m.capabilities.tools),
            ("vision", m.capabilities.vision),
            ("json_schema", m.capabilities.json_schema),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect();
        data.push(entry(
            m.id.clone(),
            json!({
                "kind": "model",
                "tier": c.tiers()[m.tier],
                "provider": c.providers()[m.provider].name,
                "upstream_model": m.upstream_model,
                "context_window": m.context_window,
                "capabilities": caps,
                "price_per_million": {"input": m.price.input.as_usd(), "cached_input": m.price.cached_input.as_usd(), "output": m.price.output.as_usd()},
                "available": state.model_available(i),
            }),
        ));
    }
    // Glob aliases are not names a picker can send; they are listed beside the names.
    let patterns: Vec<Value> = c
        .alias_patterns()
        .iter()
        .map(|p| {
            let mut v = target(&p.target);
            v["pattern"] = json!(p.pattern);
            v
        })
        .collect();
    Json(json!({"object": "list", "data": data, "triage_alias_patterns": patterns}))
}
