//! Store tests, run against SQLite always and against PostgreSQL when
//! `TRIAGE_TEST_POSTGRES_URL` is set (`.ci/run` starts a real server and sets it).

use std::sync::Arc;

use triage_core::cost::{NanoUsd, TokenUsage};

use crate::lease_tests::held;
use crate::*;

pub(crate) async fn stores() -> Vec<Store> {
    let path = std::env::temp_dir().join(format!("triage-store-test-{}.db", uuid::Uuid::new_v4().simple()));
    let mut out = vec![Store::connect(&format!("sqlite://{}", path.display())).await.unwrap()];
    if let Ok(url) = std::env::var("TRIAGE_TEST_POSTGRES_URL") {
        out.push(Store::connect(&url).await.unwrap_or_else(|e| panic!("postgres at {url}: {e}")));
    } else {
        eprintln!("TRIAGE_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
    }
    out
}

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[tokio::test]
async fn keys_are_stored_hashed_and_can_be_revoked() {
    for store in stores().await {
        let user = unique("user");
        let (rec, secret) = store
            .create_key(&NewKey {
                user: user.clone(),
                team: "eng".into(),
                tiers: vec!["local".into(), "mid".into()],
                budget_month: Some(NanoUsd(5_000_000_000)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(secret.starts_with("tr-") && secret.len() == 67);
        let found = store.find_key(&secret).await.unwrap().unwrap();
        assert_eq!(found, rec);
        assert_eq!(found.tiers, ["local", "mid"]);
        assert!(store.find_key("tr-wrong").await.unwrap().is_none());
        // Only the hash is stored.
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT key_hash FROM virtual_keys").fetch_all(&store.pool).await.unwrap();
        assert!(rows.iter().all(|(h,)| !h.contains(&secret[3..]) && h.len() == 64));
        assert!(store.revoke_key(&rec.id).await.unwrap());
        assert!(store.find_key(&secret).await.unwrap().unwrap().revoked);
        assert!(!store.revoke_key(&rec.id).await.unwrap());
    }
}

/// 200 concurrent reservations against a budget that allows 50: exactly 50 pass, and after
/// settling at the real cost the counters show no drift (shared case C29).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_pass_the_limit() {
    for store in stores().await {
        let line = BudgetLine {
            scope: "team".into(),
            subject: unique("team"),
            tier: None,
            period: Period::Month,
            limit: NanoUsd(50 * 400_000),
            soft: 0.8,
        };
        let store = Arc::new(store);
        let now = now_ms();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (store, line) = (store.clone(), line.clone());
            tasks.push(tokio::spawn(async move { store.reserve(&[line], NanoUsd(400_000), now).await.unwrap() }));
        }
        let mut admitted = Vec::new();
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => admitted.push(r),
                Err(e) => {
                    refused += 1;
                    assert!(e.used.0 <= line.limit.0);
                    assert!(e.resets_at.ends_with("-01T00:00:00.000Z"), "{}", e.resets_at);
                    assert!(e.resets_in_ms > 0 && e.resets_in_ms <= 31 * 86_400_000);
                }
            }
        }
        assert_eq!((admitted.len(), refused), (50, 150), "{:?}", store.backend());
        let (spent, reserved) = store.budget_used(&line, now).await.unwrap();
        assert_eq!((spent, reserved), (NanoUsd(0), NanoUsd(50 * 400_000)));
        // Half settle at a lower real cost, half are released (failed or cancelled).
        for (i, r) in admitted.into_iter().enumerate() {
            let actual = if i % 2 == 0 { NanoUsd(300_000) } else { NanoUsd(0) };
            store.settle(r, actual).await.unwrap();
        }
        assert_eq!(store.budget_used(&line, now).await.unwrap(), (NanoUsd(25 * 300_000), NanoUsd(0)));
        assert_eq!(held(&store, &line).await, 0, "every reservation row is gone");
    }
}

#[tokio::test]
async fn reservation_over_two_lines_releases_the_first_when_the_second_is_full() {
    for store in stores().await {
        let now = now_ms();
        let user = BudgetLine {
            scope: "user".into(),
            subject: unique("u"),
            tier: None,
            period: Period::Day,
            limit: NanoUsd(1000),
            soft: 0.8,
        };
        let tier = BudgetLine { tier: Some("frontier".into()), limit: NanoUsd(100), ..user.clone() };
        let err = store.reserve(&[user.clone(), tier.clone()], NanoUsd(150), now).await.unwrap().unwrap_err();
        assert_eq!(err.line, tier);
        assert_eq!(store.budget_used(&user, now).await.unwrap(), (NanoUsd(0), NanoUsd(0)));
        assert_eq!(held(&store, &user).await, 0);
        let r = store.reserve(&[user.clone(), tier.clone()], NanoUsd(100), now).await.unwrap().unwrap();
        assert_eq!(store.budget_used(&user, now).await.unwrap(), (NanoUsd(0), NanoUsd(100)));
        assert_eq!((held(&store, &user).await, held(&store, &tier).await), (1, 1));
        store.settle(r, NanoUsd(60)).await.unwrap();
        assert_eq!(store.budget_used(&user, now).await.unwrap(), (NanoUsd(60), NanoUsd(0)));
        assert_eq!(store.budget_used(&tier, now).await.unwrap(), (NanoUsd(60), NanoUsd(0)));
        assert_eq!((held(&store, &user).await, held(&store, &tier).await), (0, 0));
    }
}

#[tokio::test]
async fn ledger_rows_are_written_in_batches_and_reported() {
    for store in stores().await {
        let ledger = Ledger::spawn(store.clone());
        let team = unique("team");
        let ts = now_ms();
        for (i, (tier, cost)) in
            [("local", 0u64), ("mid", 1000), ("mid", 2000), ("frontier", 9000)].into_iter().enumerate()
        {
            ledger.record(RequestRecord {
                request_id: format!("{team}-{i}"),
                ts_ms: ts,
                team: Some(team.clone()),
                endpoint: "chat_completions".into(),
                requested_model: "auto".into(),
                tier: Some(tier.into()),
                usage: TokenUsage { input: 100, cached_input: 10, output: 20, reasoning: 5, ..Default::default() },
                cost: NanoUsd(cost),
                baseline_cost: NanoUsd(9000),
                ttft_ms: if i % 2 == 0 { Some(12.5) } else { None },
                stream: i % 2 == 0,
                score: if i == 1 { Some(0.25) } else { None },
                latency_ms: 20.0,
                status: "200".into(),
                attempts: vec![AttemptRecord {
                    model: "m".into(),
                    provider: "p".into(),
                    outcome: "200".into(),
                    latency_ms: 1.5,
                }],
                ..Default::default()
            });
        }
        // A duplicate row (a retry of the writer) is kept once.
        ledger.record(RequestRecord {
            request_id: format!("{team}-0"),
            ts_ms: ts,
            endpoint: "x".into(),
            status: "200".into(),
            ..Default::default()
        });
        ledger.shutdown().await;
        let by_team = store.spend(GroupBy::Team, Some(&rfc3339(ts - 1000))).await.unwrap();
        let row = by_team.iter().find(|r| r.key == team).unwrap();
        assert_eq!((row.requests, row.input_tokens, row.cached_input_tokens, row.output_tokens), (4, 400, 40, 80));
        assert_eq!((row.cost, row.baseline_cost), (NanoUsd(12_000), NanoUsd(36_000)));
        let tiers = store.spend(GroupBy::Tier, None).await.unwrap();
        assert!(tiers.iter().any(|r| r.key == "mid" && r.requests >= 2));
        assert_eq!(
            store.attempts_of(&format!("{team}-1")).await.unwrap(),
            [("m".to_owned(), "p".to_owned(), "200".to_owned())]
        );
        let report = Report::build(&store, GroupBy::Team, Some(&rfc3339(ts - 1000))).await.unwrap();
        let j = report.to_json();
        let mine = j["rows"].as_array().unwrap().iter().find(|r| r["key"] == team.as_str()).unwrap().clone();
        assert_eq!(mine["cost_usd"], 0.000012);
        assert_eq!(mine["baseline_over_cost"], 3.0);
        assert!(report.to_csv().contains(&format!("{team},4,400,40,80,0.000012,0.000036")));
        assert!(report.to_table().contains("requests per tier:"));
        let (status, _, cost, usage, estimated) = store.request_summary(&format!("{team}-3")).await.unwrap().unwrap();
        assert_eq!((status.as_str(), cost, usage.reasoning, estimated), ("200", NanoUsd(9000), 5, false));
    }
}

#[test]
fn postgres_placeholders_are_numbered() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let path = std::env::temp_dir().join(format!("triage-store-ph-{}.db", uuid::Uuid::new_v4().simple()));
        Store::connect(&format!("sqlite://{}", path.display())).await.unwrap()
    });
    let pg = Store { backend: Backend::Postgres, ..store.clone() };
    assert_eq!(pg.sql("a = ? AND b = ?"), "a = $1 AND b = $2");
    assert_eq!(store.sql("a = ?"), "a = ?");
    assert!(matches!(rt.block_on(Store::connect("mysql://x")), Err(StoreError::Url(_))));
}

#[test]
fn statement_sizes_cover_every_row_in_few_shapes() {
    let mut shapes = std::collections::BTreeSet::new();
    for n in 0..=1000 {
        let sizes: Vec<usize> = crate::ledger::statement_sizes(n).collect();
        assert_eq!(sizes.iter().sum::<usize>(), n, "{n}");
        assert!(sizes.iter().all(|&s| (1..=64).contains(&s) && s.is_power_of_two()), "{n}: {sizes:?}");
        shapes.extend(sizes);
    }
    assert_eq!(shapes.into_iter().collect::<Vec<_>>(), [1, 2, 4, 8, 16, 32, 64]);
    assert_eq!(crate::ledger::statement_sizes(1000).collect::<Vec<_>>(), [[64; 15].as_slice(), &[32, 8]].concat());
}

/// A batch larger than one statement, with several attempts per row and a request id repeated
/// inside the batch, lands whole: every row once, every attempt in order.
#[tokio::test]
async fn a_large_batch_is_written_whole_with_its_attempts() {
    for store in stores().await {
        let team = unique("team");
        let ts = now_ms();
        let mut rows: Vec<RequestRecord> = (0..150u64)
            .map(|i| RequestRecord {
                request_id: format!("{team}-{i}"),
                ts_ms: ts,
                team: Some(team.clone()),
                endpoint: "chat_completions".into(),
                requested_model: "auto".into(),
                tier: Some("mid".into()),
                usage: TokenUsage { input: i, output: 1, ..Default::default() },
                cost: NanoUsd(i),
                score: (i % 3 == 0).then_some(0.5),
                ttft_ms: (i % 2 == 0).then_some(3.0),
                status: "200".into(),
                attempts: (0..i % 3)
                    .map(|n| AttemptRecord {
                        model: format!("m{n}"),
                        provider: "p".into(),
                        outcome: if n + 1 == i % 3 { "200".into() } else { "503".into() },
                        latency_ms: 1.0,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        // Repeated inside the batch: kept once (the first).
        rows.push(RequestRecord { request_id: format!("{team}-7"), endpoint: "x".into(), ..Default::default() });
        store.write_batch(&rows).await.unwrap();
        let row = store.spend(GroupBy::Team, None).await.unwrap().into_iter().find(|r| r.key == team).unwrap();
        assert_eq!((row.requests, row.input_tokens, row.output_tokens), (150, (0..150).sum(), 150));
        assert_eq!(row.cost, NanoUsd((0..150).sum()));
        assert_eq!(
            store.attempts_of(&format!("{team}-149")).await.unwrap(),
            [("m0".to_owned(), "p".to_owned(), "503".to_owned()), ("m1".to_owned(), "p".to_owned(), "200".to_owned())]
        );
        assert!(store.attempts_of(&format!("{team}-3")).await.unwrap().is_empty());
        // Written again (a writer retry): nothing changes.
        store.write_batch(&rows).await.unwrap();
        let again = store.spend(GroupBy::Team, None).await.unwrap().into_iter().find(|r| r.key == team).unwrap();
        assert_eq!(again, row);
    }
}

/// A full queue drops (and counts) new rows instead of growing; what was queued is written.
#[tokio::test]
async fn a_full_ledger_queue_drops_and_counts_rows() {
    for store in stores().await {
        let ledger = Ledger::with_capacity(store.clone(), 4);
        let team = unique("team");
        // The writer task cannot run before this test yields (current-thread runtime): the
        // first 4 rows fill the queue, the other 6 are dropped.
        for i in 0..10 {
            ledger.record(RequestRecord {
                request_id: format!("{team}-{i}"),
                ts_ms: now_ms(),
                team: Some(team.clone()),
                endpoint: "chat_completions".into(),
                status: "200".into(),
                ..Default::default()
            });
        }
        assert_eq!(ledger.dropped(), 6);
        ledger.shutdown().await;
        let row = store.spend(GroupBy::Team, None).await.unwrap().into_iter().find(|r| r.key == team).unwrap();
        assert_eq!(row.requests, 4);
        assert!(store.request_summary(&format!("{team}-3")).await.unwrap().is_some());
        assert!(store.request_summary(&format!("{team}-4")).await.unwrap().is_none());
    }
}

#[test]
fn every_file_in_migrations_is_embedded_in_order() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut on_disk: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            let version = name.split('_').next().unwrap().parse().unwrap();
            (version, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    on_disk.sort_by_key(|(v, _)| *v);
    let embedded: Vec<(i64, String)> = MIGRATOR.iter().map(|m| (m.version, m.sql.to_string())).collect();
    assert_eq!(embedded.len(), on_disk.len());
    assert_eq!(embedded, on_disk);
    assert_eq!(embedded[0].0, 1);
}

/// Databases created before `sqlx::migrate!` recorded the second migration under the description
/// "cache write tokens" (the hand-written list); the embedded migrator must still accept them
/// (sqlx compares versions and checksums, not descriptions).
#[tokio::test]
async fn a_database_migrated_by_the_old_hand_list_still_opens() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("triage-store-old-migrations-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    std::fs::copy(src.join("0001_init.sql"), dir.join("0001_init.sql")).unwrap();
    std::fs::copy(src.join("0002_cache_write.sql"), dir.join("0002_cache_write_tokens.sql")).unwrap();
    let db = std::env::temp_dir().join(format!("triage-store-old-{id}.db"));
    let url = format!("sqlite://{}?mode=rwc", db.display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let old = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    old.run(&pool).await.unwrap();
    let described: Vec<String> =
        sqlx::query_scalar("SELECT description FROM _sqlx_migrations ORDER BY version").fetch_all(&pool).await.unwrap();
    assert_eq!(described, ["init", "cache write tokens"]);
    pool.close().await;
    let store = Store::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    assert!(store.find_key("tk-nothing-here").await.unwrap().is_none());
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&db);
}

#[test]
fn a_database_url_is_shown_without_its_password() {
    use crate::redact_url;
    assert_eq!(redact_url("postgres://triage:s3cret@db.internal:5432/x"), "postgres://triage:***@db.internal:5432/x");
    assert_eq!(
        redact_url("postgres://triage:p@ss@127.0.0.1/x?sslmode=require"),
        "postgres://triage:***@127.0.0.1/x?sslmode=require"
    );
    // No password, no user info, or not a URL: unchanged.
    assert_eq!(redact_url("postgres://triage@db/x"), "postgres://triage@db/x");
    assert_eq!(redact_url("postgres://db:5432/x"), "postgres://db:5432/x");
    assert_eq!(redact_url("sqlite://data/triage.db"), "sqlite://data/triage.db");
    assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
}
