//! Tests of the evaluation tables, against SQLite and (with `TRIAGE_TEST_POSTGRES_URL`) PostgreSQL.

use triage_core::cost::{NanoUsd, TokenUsage};

use crate::tests::{stores, unique};
use crate::*;

#[tokio::test]
async fn eval_rows_round_trip_and_eval_spend_stays_out_of_the_spend_report() {
    for store in stores().await {
        let id = unique("req");
        let team = unique("team");
        let since = rfc3339(now_ms() - 1000);
        // The client's request and two eval calls in the ledger.
        let base = RequestRecord {
            request_id: id.clone(),
            ts_ms: now_ms(),
            team: Some(team.clone()),
            endpoint: "chat_completions".into(),
            requested_model: "auto".into(),
            tier: Some("local".into()),
            model: Some("cheap".into()),
            usage: TokenUsage { input: 10, output: 5, ..Default::default() },
            cost: NanoUsd(700),
            status: "200".into(),
            ..Default::default()
        };
        let eval_call = |suffix: &str, cost| RequestRecord {
            request_id: format!("{id}#{suffix}"),
            kind: "eval".into(),
            cost: NanoUsd(cost),
            ..base.clone()
        };
        store.write_batch(&[base.clone(), eval_call("reference", 9000), eval_call("judge-1", 400)]).await.unwrap();
        let spend = store.spend(GroupBy::Team, Some(&since)).await.unwrap();
        let mine: Vec<&SpendRow> = spend.iter().filter(|r| r.key == team).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!((mine[0].requests, mine[0].cost), (1, NanoUsd(700)), "eval calls are not the team's spend");
        assert!(store.eval_spend(Some(&since)).await.unwrap().0 >= 9400);

        let rep = r#"{"kind":"lexical/triage-lexical-v1","dim":35,"sparse":[[3,0.5]],"dense":[1.0]}"#;
        let rec = EvalRecord {
            request_id: id.clone(),
            ts_ms: base.ts_ms,
            team: Some(team.clone()),
            endpoint: "chat_completions".into(),
            requested_model: "auto".into(),
            reason: "auto".into(),
            tier: "local".into(),
            model: "cheap".into(),
            reference_model: "big".into(),
            judge_model: "judge".into(),
            outcome: "loss".into(),
            verdict_first: Some("B>A".into()),
            verdict_second: Some("A>>B".into()),
            routed_cost: NanoUsd(700),
            reference_cost: NanoUsd(9000),
            judge_cost: NanoUsd(400),
            score: Some(0.25),
            representation: Some(rep.into()),
            ..Default::default()
        };
        store.insert_eval(&rec).await.unwrap();
        store.insert_eval(&rec).await.unwrap(); // idempotent
        let without = EvalRecord { request_id: unique("req"), score: None, representation: None, ..rec.clone() };
        store.insert_eval(&without).await.unwrap();
        let rows = store.evals(Some(&since), true).await.unwrap();
        let got = rows.iter().find(|r| r.request_id == id).unwrap();
        assert_eq!(got, &EvalRecord { ts_ms: got.ts_ms, ..rec.clone() });
        assert_eq!(got.ts_ms, base.ts_ms);
        let got2 = rows.iter().find(|r| r.request_id == without.request_id).unwrap();
        assert_eq!((got2.score, got2.representation.as_deref()), (None, None));
        let light = store.evals(Some(&since), false).await.unwrap();
        assert!(light.iter().all(|r| r.representation.is_none()));

        // Feedback: only on a request in the ledger; a second one replaces the first.
        assert_eq!(store.request_owner(&id).await.unwrap(), Some(RequestOwner { key_id: None }));
        assert_eq!(store.request_owner("no-such-request").await.unwrap(), None);
        assert_eq!(store.request_owner(&format!("{id}#reference")).await.unwrap(), None, "eval rows take no feedback");
        let fb = Feedback {
            request_id: id.clone(),
            ts_ms: now_ms(),
            score: 1.0,
            comment: Some("good".into()),
            key_id: None,
        };
        store.upsert_feedback(&fb).await.unwrap();
        store.upsert_feedback(&Feedback { score: 0.0, comment: None, ..fb }).await.unwrap();
        assert_eq!(store.feedback_of(&id).await.unwrap(), Some((0.0, None)));
        let rows = store.feedback_rows(Some(&since)).await.unwrap();
        let f = rows.iter().find(|f| f.request_id == id).unwrap();
        assert_eq!((f.score, f.tier.as_deref(), f.requested_model.as_str()), (0.0, Some("local"), "auto"));

        let report = EvalReport::build(&store, EvalGroupBy::Tier, Some(&since)).await.unwrap();
        assert!(report.total.evaluated >= 2 && report.total.losses >= 2);
    }
}
