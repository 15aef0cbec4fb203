//! Production evaluation's tables: one row per shadow-evaluated request ([`EvalRecord`]), one
//! feedback row per request ([`Feedback`]), and the evaluation's own spend (ledger rows of kind
//! `eval`).
//!
//! An evaluated request's row holds who sent it, how it was routed, the verdicts and the costs,
//! and the router's representation of the request (JSON of
//! `triage_core::router::Representation`): the features the router trains on, not the text. The
//! prompt and both answers are stored only when the configuration says `store_text = true`.

use sqlx::Row;
use triage_core::cost::NanoUsd;

use crate::{rfc3339, Store, StoreError, Utc};

/// The prompt and both answers, kept only with `store_text = true`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalTexts {
    /// The request as the judge read it.
    pub prompt: String,
    /// The answer the client got.
    pub answer: String,
    /// The reference model's answer.
    pub reference: String,
}

/// One shadow-evaluated request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalRecord {
    /// The request id (`x-request-id`), shared with its ledger row.
    pub request_id: String,
    /// Arrival of the request, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Virtual key id.
    pub key_id: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Team.
    pub team: Option<String>,
    /// Role (`role:NAME` requests).
    pub role: Option<String>,
    /// `chat_completions` or `messages`.
    pub endpoint: String,
    /// The `model` field as sent.
    pub requested_model: String,
    /// Why the routed model was chosen, as a kind (`triage_core::evals::reason_kind`).
    pub reason: String,
    /// Tier that answered.
    pub tier: String,
    /// Model that answered.
    pub model: String,
    /// The reference model.
    pub reference_model: String,
    /// The judge model.
    pub judge_model: String,
    /// `win`, `tie`, `loss` (the routed answer against the reference), `judge_failed` (a judge
    /// reply without a verdict) or `error` (a reference or judge call failed).
    pub outcome: String,
    /// The verdict with the routed answer shown first (as A), e.g. `A>B`.
    pub verdict_first: Option<String>,
    /// The verdict with the routed answer shown second (as B).
    pub verdict_second: Option<String>,
    /// The two verdicts disagreed (the outcome is then `tie`).
    pub inconsistent: bool,
    /// What the routed answer cost (the client's request).
    pub routed_cost: NanoUsd,
    /// What the reference's answer cost (evaluation spend).
    pub reference_cost: NanoUsd,
    /// What both judge calls cost (evaluation spend).
    pub judge_cost: NanoUsd,
    /// The router's difficulty score of the request.
    pub score: Option<f64>,
    /// The router's representation of the request (JSON), when the router has one.
    pub representation: Option<String>,
    /// Texts, only with `store_text = true`.
    pub texts: Option<EvalTexts>,
    /// Why the evaluation failed (`outcome = error`), without any request text.
    pub error: Option<String>,
}

/// Explicit feedback on one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The request (`x-request-id`).
    pub request_id: String,
    /// When it was given, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The score, in [0, 1] (thumbs up 1, thumbs down 0).
    pub score: f64,
    /// Optional comment.
    pub comment: Option<String>,
    /// The key that gave it.
    pub key_id: Option<String>,
}

/// A feedback score with what the ledger knows of its request (for grouping in reports).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeedbackRow {
    /// The request.
    pub request_id: String,
    /// The score.
    pub score: f64,
    /// Arrival of the request (RFC 3339).
    pub ts: String,
    /// Key id of the request.
    pub key_id: Option<String>,
    /// Role of the request.
    pub role: Option<String>,
    /// Tier that answered.
    pub tier: Option<String>,
    /// Model that answered.
    pub model: Option<String>,
    /// The `model` field as sent.
    pub requested_model: String,
    /// The route reason.
    pub route_reason: Option<String>,
}

/// The request behind a request id, as feedback needs it: whether it exists and whose it was.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOwner {
    /// The key that sent it.
    pub key_id: Option<String>,
}

const EVAL_COLS: &str = "request_id, ts, day, key_id, user_id, team, role, endpoint, requested_model, reason, tier, model, reference_model, judge_model, outcome, verdict_first, verdict_second, inconsistent, routed_cost_nanos, reference_cost_nanos, judge_cost_nanos, score, representation, prompt_text, answer_text, reference_text, error";

fn nanos(r: &sqlx::any::AnyRow, c: &str) -> Result<NanoUsd, StoreError> {
    Ok(NanoUsd(r.try_get::<i64, _>(c)?.max(0) as u64))
}

fn eval_of(r: &sqlx::any::AnyRow, with_representation: bool) -> Result<EvalRecord, StoreError> {
    let ts: String = r.try_get("ts")?;
    let prompt: Option<String> = r.try_get("prompt_text")?;
    let texts = match prompt {
        Some(prompt) => Some(EvalTexts {
            prompt,
            answer: r.try_get::<Option<String>, _>("answer_text")?.unwrap_or_default(),
            reference: r.try_get::<Option<String>, _>("reference_text")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(EvalRecord {
        request_id: r.try_get("request_id")?,
        ts_ms: crate::time::ms_of_rfc3339(&ts).unwrap_or(0),
        key_id: r.try_get("key_id")?,
        user: r.try_get("user_id")?,
        team: r.try_get("team")?,
        role: r.try_get("role")?,
        endpoint: r.try_get("endpoint")?,
        requested_model: r.try_get("requested_model")?,
        reason: r.try_get("reason")?,
        tier: r.try_get("tier")?,
        model: r.try_get("model")?,
        reference_model: r.try_get("reference_model")?,
        judge_model: r.try_get("judge_model")?,
        outcome: r.try_get("outcome")?,
        verdict_first: r.try_get("verdict_first")?,
        verdict_second: r.try_get("verdict_second")?,
        inconsistent: r.try_get::<i32, _>("inconsistent")? != 0,
        routed_cost: nanos(r, "routed_cost_nanos")?,
        reference_cost: nanos(r, "reference_cost_nanos")?,
        judge_cost: nanos(r, "judge_cost_nanos")?,
        score: r.try_get("score")?,
        representation: if with_representation { r.try_get("representation")? } else { None },
        texts,
        error: r.try_get("error")?,
    })
}

impl Store {
    /// Writes one evaluation result (a second write of the same request id is ignored).
    ///
    /// Errors: [`StoreError`].
    pub async fn insert_eval(&self, e: &EvalRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO evals ({EVAL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, -1.0), ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING"
        );
        let t = e.texts.as_ref();
        sqlx::query(&self.sql(&sql))
            .bind(e.request_id.as_str())
            .bind(rfc3339(e.ts_ms))
            .bind(Utc::from_ms(e.ts_ms).date())
            .bind(e.key_id.as_deref())
            .bind(e.user.as_deref())
            .bind(e.team.as_deref())
            .bind(e.role.as_deref())
            .bind(e.endpoint.as_str())
            .bind(e.requested_model.as_str())
            .bind(e.reason.as_str())
            .bind(e.tier.as_str())
            .bind(e.model.as_str())
            .bind(e.reference_model.as_str())
            .bind(e.judge_model.as_str())
            .bind(e.outcome.as_str())
            .bind(e.verdict_first.as_deref())
            .bind(e.verdict_second.as_deref())
            .bind(i32::from(e.inconsistent))
            .bind(e.routed_cost.0 as i64)
            .bind(e.reference_cost.0 as i64)
            .bind(e.judge_cost.0 as i64)
            .bind(e.score.unwrap_or(-1.0))
            .bind(e.representation.as_deref())
            .bind(t.map(|t| t.prompt.as_str()))
            .bind(t.map(|t| t.answer.as_str()))
            .bind(t.map(|t| t.reference.as_str()))
            .bind(e.error.as_deref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Evaluation results since `since` (RFC 3339 or `YYYY-MM-DD`; `None` for all), oldest
    /// first; `with_representation` loads the representations too (training needs them,
    /// reports do not).
    ///
    /// Errors: [`StoreError`].
    pub async fn evals(&self, since: Option<&str>, with_representation: bool) -> Result<Vec<EvalRecord>, StoreError> {
        let cols = if with_representation {
            EVAL_COLS.to_owned()
        } else {
            EVAL_COLS.replace("representation", "NULL AS representation")
        };
        let sql = format!("SELECT {cols} FROM evals WHERE ts >= ? ORDER BY ts, request_id");
        let rows = sqlx::query(&self.sql(&sql)).bind(since.unwrap_or("")).fetch_all(&self.pool).await?;
        rows.iter().map(|r| eval_of(r, with_representation)).collect()
    }

    /// The ledger row of `request_id`, if there is one: who sent it.
    ///
    /// Errors: [`StoreError`].
    pub async fn request_owner(&self, request_id: &str) -> Result<Option<RequestOwner>, StoreError> {
        let row = sqlx::query(&self.sql("SELECT key_id FROM requests WHERE request_id = ? AND kind = 'request'"))
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(RequestOwner { key_id: r.try_get("key_id")? })).transpose()
    }

    /// Stores feedback on a request; a later one for the same request replaces it.
    ///
    /// Errors: [`StoreError`].
    pub async fn upsert_feedback(&self, f: &Feedback) -> Result<(), StoreError> {
        sqlx::query(&self.sql(
            "INSERT INTO feedback (request_id, ts, score, comment, key_id) VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET ts = excluded.ts, score = excluded.score, comment = excluded.comment, key_id = excluded.key_id",
        ))
        .bind(f.request_id.as_str())
        .bind(rfc3339(f.ts_ms))
        .bind(f.score)
        .bind(f.comment.as_deref())
        .bind(f.key_id.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The feedback on one request: (score, comment).
    ///
    /// Errors: [`StoreError`].
    pub async fn feedback_of(&self, request_id: &str) -> Result<Option<(f64, Option<String>)>, StoreError> {
        let row = sqlx::query(&self.sql("SELECT score, comment FROM feedback WHERE request_id = ?"))
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("score")?, r.try_get("comment")?))).transpose()
    }

    /// Feedback on requests that arrived since `since`, with their ledger fields.
    ///
    /// Errors: [`StoreError`].
    pub async fn feedback_rows(&self, since: Option<&str>) -> Result<Vec<FeedbackRow>, StoreError> {
        let rows = sqlx::query(&self.sql(
            "SELECT f.request_id AS request_id, f.score AS score, r.ts AS ts, r.key_id AS key_id, r.role AS role, r.tier AS tier, r.model AS model, r.requested_model AS requested_model, r.route_reason AS route_reason FROM feedback f JOIN requests r ON r.request_id = f.request_id WHERE r.ts >= ? ORDER BY r.ts",
        ))
        .bind(since.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FeedbackRow {
                    request_id: r.try_get("request_id")?,
                    score: r.try_get("score")?,
                    ts: r.try_get("ts")?,
                    key_id: r.try_get("key_id")?,
                    role: r.try_get("role")?,
                    tier: r.try_get("tier")?,
                    model: r.try_get("model")?,
                    requested_model: r.try_get("requested_model")?,
                    route_reason: r.try_get("route_reason")?,
                })
            })
            .collect()
    }

    /// The evaluation's own spend since `since`: the cost of the ledger rows of kind `eval`.
    ///
    /// Errors: [`StoreError`].
    pub async fn eval_spend(&self, since: Option<&str>) -> Result<NanoUsd, StoreError> {
        let r = sqlx::query(
            &self.sql("SELECT CAST(SUM(cost_nanos) AS BIGINT) AS c FROM requests WHERE kind = 'eval' AND ts >= ?"),
        )
        .bind(since.unwrap_or(""))
        .fetch_one(&self.pool)
        .await?;
        Ok(NanoUsd(r.try_get::<Option<i64>, _>("c")?.unwrap_or(0).max(0) as u64))
    }
}
