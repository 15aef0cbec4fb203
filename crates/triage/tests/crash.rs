//! Issue 18, item 1: phantom spend after a crash. The real `triage serve` binary, with requests
//! in flight to a slow upstream, is killed with SIGKILL and started again; the budget its
//! requests held must come back within the documented time (the lease plus a third), on SQLite
//! and on PostgreSQL (`TRIAGE_TEST_POSTGRES_URL`). On today's main the reservations stayed until
//! the month rolled over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use triage_core::cost::NanoUsd;
use triage_store::{BudgetLine, NewKey, Period, Store};
use triage_testkit::{FakeUpstream, Reply, Step};

/// Requests in flight when the gateway is killed.
const IN_FLIGHT: usize = 97;
/// `[spend] reservation_lease_secs` for this test.
const LEASE_SECS: u64 = 3;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn serve(cfg: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(cfg)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(base: &str) {
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m-up","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":10,"total_tokens":20}}"#;

/// Returns (seconds from the kill until nothing was reserved, seconds until a request needing the
/// whole budget was admitted).
fn kill_and_restart(db: &str, tag: &str) -> (f64, f64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("triage-crash-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = if db == "sqlite" { format!("sqlite://{}", dir.join("triage.db").display()) } else { db.to_owned() };
    // "slow" answers after a minute (the gateway is dead by then), anything else at once.
    let up = rt.block_on(FakeUpstream::start(|r, _| {
        let slow = r.json()["messages"][0]["content"] == "slow";
        if slow {
            Reply::steps(200, vec![Step::Sleep(Duration::from_secs(60)), Step::Write(ANSWER.as_bytes().to_vec())])
        } else {
            Reply::json(200, ANSWER)
        }
    }));
    let cfg = dir.join("triage.toml");
    std::fs::write(
        &cfg,
        format!(
            "tiers = [\"mid\"]\nauth = \"keys\"\n[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\n[[models]]\nid = \"m\"\nprovider = \"up\"\nupstream_model = \"m-up\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 3.0 }}\ncontext_window = 1000000\n[spend]\ndatabase = \"{db}\"\nreservation_lease_secs = {LEASE_SECS}\n",
            up.url()
        ),
    )
    .unwrap();
    // $1 a month; each slow request reserves 3,000 output tokens at $3/M plus its prompt,
    // about $0.009: 97 in flight hold about $0.87.
    let store = rt.block_on(Store::connect(&db)).unwrap();
    let user = format!("crash-{tag}-{}", uuid::Uuid::new_v4().simple());
    let (rec, key) = rt
        .block_on(store.create_key(&NewKey {
            user,
            team: "crash".into(),
            budget_month: Some(NanoUsd(1_000_000_000)),
            ..Default::default()
        }))
        .unwrap();
    let line = BudgetLine {
        scope: "key".into(),
        subject: rec.id.clone(),
        tier: None,
        period: Period::Month,
        limit: NanoUsd(1_000_000_000),
        soft: 0.8,
    };
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(&cfg, port);
    let key = Arc::new(key);
    rt.block_on(wait_healthy(&base));
    // Load: IN_FLIGHT concurrent slow requests, all admitted and waiting on the upstream.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (c, url, key) = (client.clone(), format!("{base}/v1/chat/completions"), key.clone());
        tasks.push(rt.spawn(async move {
            c.post(url)
                .bearer_auth(&*key)
                .body(r#"{"model":"m","max_tokens":3000,"messages":[{"role":"user","content":"slow"}]}"#)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.calls() < IN_FLIGHT {
        assert!(Instant::now() < deadline, "only {} of {IN_FLIGHT} requests reached the upstream", up.calls());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (spent, reserved) = rt.block_on(store.budget_used(&line, triage_store::now_ms())).unwrap();
    assert_eq!(spent, NanoUsd(0));
    assert!(reserved.0 > 800_000_000 && reserved.0 < 1_000_000_000, "{reserved}");
    // kill -9 (std's Child::kill sends SIGKILL).
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    for t in tasks {
        // Every client sees its connection die: none is answered.
        assert!(rt.block_on(t).unwrap().is_err());
    }
    // Right after the crash the reservations are still there (their lease has not expired).
    let (_, held) = rt.block_on(store.budget_used(&line, triage_store::now_ms())).unwrap();
    assert!(held.0 > 0, "the crash left reservations behind");
    let mut child = serve(&cfg, port);
    rt.block_on(wait_healthy(&base));
    let back = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(LEASE_SECS * 4 + 10);
        loop {
            let (spent, reserved) = store.budget_used(&line, triage_store::now_ms()).await.unwrap();
            if reserved.0 == 0 {
                assert_eq!(spent, NanoUsd(0), "no request completed; nothing was spent");
                return killed.elapsed().as_secs_f64();
            }
            assert!(Instant::now() < deadline, "{reserved} still reserved {:?} after the kill", killed.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The whole budget is usable again: a request reserving about $0.99 is admitted.
    let admitted = rt.block_on(async {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&*key)
            .body(r#"{"model":"m","max_tokens":330000,"messages":[{"role":"user","content":"quick"}]}"#)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    });
    assert_eq!(admitted.0, 200, "{}", admitted.1);
    let until_admitted = killed.elapsed().as_secs_f64();
    let rows = rt.block_on(store.budget_status(triage_store::now_ms())).unwrap();
    let mine = rows.iter().find(|s| s.scope == "key" && s.subject == rec.id).unwrap();
    // Settled at the real cost: 10 input at $1/M and 10 output at $3/M.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (spent, reserved) = rt.block_on(store.budget_used(&line, triage_store::now_ms())).unwrap();
        if reserved.0 == 0 && spent.0 == 40_000 {
            break;
        }
        assert!(Instant::now() < deadline, "spent {spent}, reserved {reserved} (status {mine:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    eprintln!(
        "{tag}: {IN_FLIGHT} requests in flight, kill -9, restart: budget back {back:.2} s after the kill, full-budget request admitted at {until_admitted:.2} s (lease {LEASE_SECS} s)"
    );
    let _ = std::fs::remove_dir_all(&dir);
    (back, until_admitted)
}

/// The documented bound: the lease, a third of it (the sweep interval), and the restart.
fn bound() -> f64 {
    LEASE_SECS as f64 * 4.0 / 3.0 + 2.0
}

#[test]
fn kill_9_under_load_gives_the_budget_back_sqlite() {
    let (back, _) = kill_and_restart("sqlite", "sqlite");
    assert!(back <= bound(), "budget back after {back:.2} s; documented: within {:.2} s", bound());
}

#[test]
fn kill_9_under_load_gives_the_budget_back_postgres() {
    let Ok(url) = std::env::var("TRIAGE_TEST_POSTGRES_URL") else {
        eprintln!("TRIAGE_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
        return;
    };
    let (back, _) = kill_and_restart(&url, "postgres");
    assert!(back <= bound(), "budget back after {back:.2} s; documented: within {:.2} s", bound());
}
