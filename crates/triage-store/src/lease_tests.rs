//! Leased reservations: a dropped request, a dead process, a live neighbour, the CLI's release.
//! SQLite always, PostgreSQL when `TRIAGE_TEST_POSTGRES_URL` is set.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use triage_core::cost::NanoUsd;

use crate::tests::{stores, unique};
use crate::*;

/// Reservation rows held on `line` (this period).
pub(crate) async fn held(store: &Store, line: &BudgetLine) -> u64 {
    let (start, _) = line.period.window(now_ms());
    let n: i64 = sqlx::query_scalar(
        &store.sql(&format!("SELECT COUNT(*) FROM budget_reservations WHERE {}", crate::budget::KEY_COLS)),
    )
    .bind(&line.scope)
    .bind(&line.subject)
    .bind(line.tier.clone().unwrap_or_default())
    .bind(line.period.as_str())
    .bind(&start)
    .fetch_one(&store.pool)
    .await
    .unwrap();
    n as u64
}

fn line(scope: &str, limit: u64) -> BudgetLine {
    BudgetLine {
        scope: scope.into(),
        subject: unique(scope),
        tier: None,
        period: Period::Month,
        limit: NanoUsd(limit),
        soft: 0.8,
    }
}

/// Waits (up to 10 s) until nothing is reserved on `lines` and no row is held.
async fn settles_to_zero(store: &Store, lines: &[BudgetLine]) -> Vec<(NanoUsd, NanoUsd, u64)> {
    store.drain(Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut out = Vec::new();
        for l in lines {
            let (s, r) = store.budget_used(l, now_ms()).await.unwrap();
            out.push((s, r, held(store, l).await));
        }
        if out.iter().all(|(_, r, h)| r.0 == 0 && *h == 0) || std::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request future dropped after 0, 1, 2, ... polls of its reservation (a client hanging up at
/// every point of admission) never leaves anything reserved: on today's main the per-line
/// updates were separate statements, and a drop between them, or after one ran, leaked.
#[tokio::test]
async fn a_reservation_dropped_at_every_poll_leaks_nothing() {
    for store in stores().await {
        let lines = [line("team", 1_000_000_000), line("key", 1_000_000_000), line("global", 1_000_000_000)];
        let mut finished = 0;
        // Every poll count up to 40, then 10 % more each time, up to well past completion.
        let mut drops: Vec<usize> = (0..40).collect();
        while drops.len() < 200 {
            let last = drops[drops.len() - 1];
            drops.push(last + last / 10);
        }
        for &k in &drops {
            let mut fut = Box::pin(store.reserve(&lines, NanoUsd(1000), now_ms()));
            let mut polls = 0;
            let done = std::future::poll_fn(|cx| {
                if polls == k {
                    return Poll::Ready(None);
                }
                polls += 1;
                // Poll again as soon as other tasks (the reservation's) have run a step.
                cx.waker().wake_by_ref();
                fut.as_mut().poll(cx).map(Some)
            })
            .await;
            drop(fut);
            if let Some(r) = done {
                // Completed before the drop: the reservation itself is dropped (the request
                // future dropped after admission) and releases itself.
                drop(r.unwrap().unwrap());
                finished += 1;
            }
        }
        assert!(finished > 0 && finished < drops.len(), "drops both before and after completion: {finished}");
        for (spent, reserved, rows) in settles_to_zero(&store, &lines).await {
            assert_eq!((spent, reserved, rows), (NanoUsd(0), NanoUsd(0), 0), "{:?}", store.backend());
        }
        assert_eq!(store.pending_settlements(), 0);
    }
}

/// The same with a multi-threaded runtime and real timing: 300 reservations, each dropped after
/// a random delay, leak nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_dropped_at_random_times_leak_nothing() {
    for store in stores().await {
        let lines = [line("team", 1_000_000_000), line("key", 1_000_000_000)];
        let mut tasks = Vec::new();
        for i in 0..300u64 {
            let (store, lines) = (store.clone(), lines.clone());
            tasks.push(tokio::spawn(async move {
                let fut = store.reserve(&lines, NanoUsd(1000), now_ms());
                let wait = Duration::from_micros((i * 7919) % 3000);
                let _ = tokio::time::timeout(wait, fut).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for (spent, reserved, rows) in settles_to_zero(&store, &lines).await {
            assert_eq!((spent, reserved, rows), (NanoUsd(0), NanoUsd(0), 0), "{:?}", store.backend());
        }
    }
}

/// A process that stops renewing its lease (killed) has its reservations released by another
/// instance's sweep once the lease expires, never before; a settlement arriving after the sweep
/// still records the real cost and releases nothing twice.
#[tokio::test]
async fn an_expired_lease_is_swept_by_another_instance_and_a_live_one_is_not() {
    for dead in stores().await {
        let url_store = dead.clone();
        // A second instance on the same database.
        let live = Store { leases: std::sync::Arc::new(crate::lease::Leases::new()), ..url_store };
        dead.set_lease(Duration::from_millis(800));
        let l = line("key", 10_000);
        let a = dead.reserve(std::slice::from_ref(&l), NanoUsd(4000), now_ms()).await.unwrap().unwrap();
        let b = dead.reserve(std::slice::from_ref(&l), NanoUsd(4000), now_ms()).await.unwrap().unwrap();
        assert!(dead.reserve(std::slice::from_ref(&l), NanoUsd(4000), now_ms()).await.unwrap().is_err());
        // While the lease holds, a neighbour's sweep leaves them alone.
        assert_eq!(live.sweep(now_ms()).await.unwrap().reservations, 0);
        assert_eq!(dead.budget_used(&l, now_ms()).await.unwrap(), (NanoUsd(0), NanoUsd(8000)));
        let status = live.budget_status(now_ms()).await.unwrap();
        let s = status.iter().find(|s| s.subject == l.subject).unwrap();
        assert_eq!((s.reserved, s.reservations, s.stale), (NanoUsd(8000), 2, 0));
        assert!(s.oldest_ms.is_some_and(|t| t <= now_ms()));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let status = live.budget_status(now_ms()).await.unwrap();
        assert_eq!(status.iter().find(|s| s.subject == l.subject).unwrap().stale, 2);
        let swept = live.sweep(now_ms()).await.unwrap();
        assert!(swept.reservations >= 2, "{swept:?}");
        assert_eq!(dead.budget_used(&l, now_ms()).await.unwrap(), (NanoUsd(0), NanoUsd(0)));
        assert_eq!(held(&live, &l).await, 0);
        // The "dead" process was only frozen: its late settlement records the real cost only.
        dead.settle(a, NanoUsd(1500)).await.unwrap();
        drop(b);
        dead.drain(Duration::from_secs(5)).await;
        assert_eq!(dead.budget_used(&l, now_ms()).await.unwrap(), (NanoUsd(1500), NanoUsd(0)));
        // The budget is usable again.
        let c = live.reserve(std::slice::from_ref(&l), NanoUsd(8000), now_ms()).await.unwrap().unwrap();
        live.settle(c, NanoUsd(0)).await.unwrap();
    }
}

/// `triage budgets release KEY`: only reservations of dead owners unless `live`; every line of
/// each such reservation; a retiring instance gives back what it still holds.
#[tokio::test]
async fn release_key_and_retire() {
    for store in stores().await {
        let other = Store { leases: std::sync::Arc::new(crate::lease::Leases::new()), ..store.clone() };
        let key = unique("key");
        let key_line = BudgetLine { subject: key.clone(), ..line("key", 1_000_000) };
        let team = line("team", 1_000_000);
        let holder = Holder { request_id: "req-1", key_id: Some(&key) };
        let r = store.reserve_for(&[team.clone(), key_line.clone()], NanoUsd(700), now_ms(), holder).await.unwrap();
        let r = r.unwrap();
        assert_eq!(other.release_key(&key, false, now_ms()).await.unwrap(), Released::default());
        let forced = other.release_key(&key, true, now_ms()).await.unwrap();
        assert_eq!(forced, Released { reservations: 1, rows: 2, amount: NanoUsd(1400) });
        assert_eq!(store.budget_used(&team, now_ms()).await.unwrap(), (NanoUsd(0), NanoUsd(0)));
        // Settling after a forced release: the cost is recorded, nothing released twice.
        store.settle(r, NanoUsd(500)).await.unwrap();
        assert_eq!(store.budget_used(&key_line, now_ms()).await.unwrap(), (NanoUsd(500), NanoUsd(0)));
        assert_eq!(store.budget_used(&team, now_ms()).await.unwrap(), (NanoUsd(500), NanoUsd(0)));
        // A key with only a team budget is still found by its key id.
        let holder = Holder { request_id: "req-2", key_id: Some(&key) };
        let kept =
            store.reserve_for(std::slice::from_ref(&team), NanoUsd(100), now_ms(), holder).await.unwrap().unwrap();
        std::mem::forget(kept); // lost by its process: only the lease knows it
        let retired = store.retire().await.unwrap();
        assert!(retired.reservations >= 1, "{retired:?}");
        assert_eq!(store.budget_used(&team, now_ms()).await.unwrap(), (NanoUsd(500), NanoUsd(0)));
        assert_eq!(held(&store, &team).await, 0);
    }
}
