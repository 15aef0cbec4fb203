//! The evaluation endpoints: `POST /v1/feedback` (explicit feedback on a request) and
//! `GET /v1/evals` (the evaluation report, admin).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use triage_core::catalog::AuthMode;
use triage_store::{EvalGroupBy, EvalReport, Feedback};

use crate::error::GatewayError;
use crate::state::SharedState;

/// Longest comment kept, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4096;

/// The body of `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The `x-request-id` the gateway answered the request with.
    pub request_id: String,
    /// 1 = good (thumbs up), 0 = bad (thumbs down), or anything between (an agent's success rate).
    pub score: f64,
    /// Optional free text.
    #[serde(default)]
    pub comment: Option<String>,
}

fn no_store() -> GatewayError {
    GatewayError::invalid("no database: set [spend] database in the config", None)
}

fn store_failed(e: triage_store::StoreError) -> GatewayError {
    tracing::error!(error = %e, "evaluation store failed");
    GatewayError::BudgetStore
}

/// `POST /v1/feedback` `{"request_id", "score", "comment"?}`: stores the score with the request
/// (a later feedback on the same request replaces it). With `auth = "keys"` the caller's key must
/// be the one that sent the request, or an admin key.
///
/// Answers 200 `{"request_id", "score"}`; 400 naming a bad field (score outside [0, 1], comment
/// over 4 KiB); 401 without a key; 403 for another key's request; 404 for an unknown request id.
pub async fn feedback(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let key = state.authenticate(&headers).await?;
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map_err(|e| GatewayError::invalid(format!("could not read the request body: {e}"), None))?;
        let f: FeedbackBody = crate::inbound::parse_json(&bytes)?;
        let id = f.request_id.trim();
        if id.is_empty() || id.len() > 128 {
            return Err(GatewayError::invalid(
                "request_id: must be the x-request-id of an answered request",
                Some("request_id".into()),
            ));
        }
        if !f.score.is_finite() || !(0.0..=1.0).contains(&f.score) {
            return Err(GatewayError::invalid(
                format!("score: {} is not between 0 (bad) and 1 (good)", f.score),
                Some("score".into()),
            ));
        }
        if f.comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT_BYTES) {
            return Err(GatewayError::invalid(
                format!("comment: longer than {MAX_COMMENT_BYTES} bytes"),
                Some("comment".into()),
            ));
        }
        let store = state.store.as_ref().ok_or_else(no_store)?;
        // The request's ledger row is written in the background: include every answered one.
        if let Some(l) = &state.ledger {
            l.flush().await;
        }
        let owner = store
            .request_owner(id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| GatewayError::NotFound(format!("no request with id \"{id}\" in the ledger")))?;
        if let Some(k) = &key {
            if !k.admin && owner.key_id.as_deref() != Some(k.id.as_str()) {
                return Err(GatewayError::Forbidden("feedback may only be given on this key's own requests".into()));
            }
        }
        let record = Feedback {
            request_id: id.to_owned(),
            ts_ms: triage_store::now_ms(),
            score: f.score,
            comment: f.comment.filter(|c| !c.trim().is_empty()),
            key_id: key.map(|k| k.id),
        };
        store.upsert_feedback(&record).await.map_err(store_failed)?;
        metrics::counter!("triage_feedback_total").increment(1);
        Ok(Json(serde_json::json!({"request_id": record.request_id, "score": record.score})).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Query of `GET /v1/evals`.
#[derive(Debug, Deserialize)]
pub struct EvalsQuery {
    by: Option<String>,
    since: Option<String>,
}

/// `GET /v1/evals?by=tier|model|role|key|reason&since=YYYY-MM-DD`: the evaluation report as JSON
/// (`triage_store::EvalReport::to_json`), plus the gateway's running totals (`live`: sampled,
/// queued, stored, skipped by reason). With `auth = "keys"` it needs an admin key.
pub async fn report(State(state): State<SharedState>, headers: HeaderMap, Query(q): Query<EvalsQuery>) -> Response {
    let result = async {
        if state.catalog.auth() == AuthMode::Keys {
            let key = state.authenticate(&headers).await?;
            if !key.is_some_and(|k| k.admin) {
                return Err(GatewayError::Forbidden("the evaluation report needs an admin key".into()));
            }
        }
        let store = state.store.as_ref().ok_or_else(no_store)?;
        let by = match q.by.as_deref() {
            None => EvalGroupBy::Tier,
            Some(b) => EvalGroupBy::parse(b).ok_or_else(|| {
                GatewayError::invalid(format!("by: \"{b}\" is not tier, model, role, key or reason"), Some("by".into()))
            })?,
        };
        if let Some(l) = &state.ledger {
            l.flush().await;
        }
        let report = EvalReport::build(store, by, q.since.as_deref()).await.map_err(store_failed)?;
        let mut json = report.to_json();
        if let (Some(shadow), Some(o)) = (&state.evals, json.as_object_mut()) {
            o.insert("live".into(), shadow.stats.to_json());
        }
        Ok(Json(json).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
