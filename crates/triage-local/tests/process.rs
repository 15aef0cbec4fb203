//! The engine in a supervised worker process: the same answers as in-process, cancellation,
//! admission, flow control, and what a crash of the worker does. The worker is this test binary
//! started again with only `engine_worker` selected (see [`worker`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use triage_local::{
    Engine, EngineConfig, EngineError, EngineProcess, EngineState, Event, GenerateRequest, Message, Sampling,
    WorkerCommand,
};
use triage_testkit::gguf::TinyLlama;

/// The worker entry point: the tests start this binary with only this test selected and the
/// worker's environment set; run as a plain test it returns at once.
#[test]
#[ignore = "the engine worker's entry point, started by the tests"]
fn engine_worker() {
    triage_local::run_test_worker_if_asked();
}

fn worker() -> WorkerCommand {
    let args = ["engine_worker", "--exact", "--ignored", "--nocapture", "--test-threads", "1", "-q"];
    WorkerCommand { program: std::env::current_exe().unwrap(), args: args.iter().map(Into::into).collect() }
}

fn model_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| TinyLlama::default().write_temp().expect("write the tiny GGUF")).clone()
}

fn config(parallel: u32, queue: u32) -> EngineConfig {
    EngineConfig { model_path: model_file(), parallel, queue, context: 512, threads: 1, chat_template: None }
}

async fn started(parallel: u32, queue: u32) -> EngineProcess {
    let e = EngineProcess::start(config(parallel, queue), worker(), "test");
    tokio::time::timeout(Duration::from_secs(60), e.ready()).await.expect("loaded in time").expect("loaded");
    e
}

fn greedy(content: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message::new("user", content)],
        max_tokens: Some(max_tokens),
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
        ..GenerateRequest::default()
    }
}

async fn events(mut g: triage_local::Generation) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = g.next().await {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn the_worker_answers_as_the_in_process_engine_does_event_for_event() {
    let direct = Engine::load(config(1, 0)).unwrap();
    let expected = events(direct.generate(greedy("Hello there", 20)).unwrap()).await;
    let e = started(1, 0).await;
    assert_eq!(e.state(), EngineState::Ready);
    let got = events(e.generate(greedy("Hello there", 20)).unwrap()).await;
    assert_eq!(got, expected);
    assert!(got.len() > 3, "{got:?}");
    let Some(Event::Finished { usage, .. }) = got.last() else { panic!("{got:?}") };
    // The counters came over with the end of the generation.
    let s = e.stats();
    assert_eq!((s.prompt_tokens, s.generated_tokens), (u64::from(usage.prompt_tokens), 20));
    assert!(s.prompt_nanos > 0 && s.generation_nanos > 0, "{s:?}");
    assert_eq!((s.in_flight, s.finished, s.cancelled, s.busy, s.crashed), (0, 1, 0, 0, 0));
    // The worker's prompt cache is the engine's: the same prompt again reuses it.
    let again = e.generate(greedy("Hello there", 20)).unwrap().collect().await.unwrap();
    assert_eq!(again.usage.cached_tokens, usage.prompt_tokens - 1);
}

#[tokio::test]
async fn a_dropped_generation_is_cancelled_in_the_worker_and_its_place_comes_back() {
    let e = started(1, 1).await;
    let mut running = e.generate(greedy("Hold the slot.", 400)).unwrap();
    assert!(matches!(running.next().await, Some(Event::Started { .. })));
    let waiting = e.generate(greedy("Wait for it.", 400)).unwrap();
    assert!(e.is_busy());
    assert!(matches!(e.generate(greedy("One too many.", 4)), Err(EngineError::Busy { capacity: 2 })));
    drop(running);
    drop(waiting);
    tokio::time::timeout(Duration::from_secs(20), e.until_idle()).await.expect("places given back");
    let s = e.stats();
    assert_eq!((s.in_flight, s.cancelled, s.busy, s.finished), (0, 2, 1, 0));
    assert!(s.generated_tokens < 400, "the cancelled generation stopped: {s:?}");
    let out = e.generate(greedy("Hello there", 4)).unwrap().collect().await.unwrap();
    assert_eq!(out.usage.completion_tokens, 4);
}

#[tokio::test]
async fn a_reader_that_stops_reading_pauses_its_generation() {
    // A prompt the tiny model answers at full length (greedy: every time), found in-process.
    let long = |c: &str| GenerateRequest { max_tokens: Some(400), ..greedy(c, 400) };
    let direct = Engine::load(EngineConfig { context: 1024, ..config(1, 0) }).unwrap();
    let mut found = None;
    for i in 0..40 {
        let evs = events(direct.generate(long(&format!("Hello {i}"))).unwrap()).await;
        if matches!(evs.last(), Some(Event::Finished { usage, .. }) if usage.completion_tokens == 400) {
            found = Some((format!("Hello {i}"), evs));
            break;
        }
    }
    let (prompt, expected) = found.expect("a prompt answered at full length");
    let e = EngineProcess::start(EngineConfig { context: 1024, ..config(1, 0) }, worker(), "test");
    e.ready().await.unwrap();
    let mut g = e.generate(long(&prompt)).unwrap();
    let first = g.next().await.unwrap();
    // Nothing read for 1.5 s: the worker sends at most its credit (64 events) and the engine's
    // own buffer fills (64 more); unpaused, the tiny model ends 400 tokens in a fraction of that.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused = e.stats().generated_tokens;
    assert!(paused > 64 && paused < 200, "generated {paused} tokens with no reader");
    let mut got = vec![first];
    got.extend(events(g).await);
    assert_eq!(got, expected, "the same events, paused or not");
}

#[tokio::test]
async fn a_crash_fails_the_requests_in_flight_and_a_new_worker_takes_over() {
    let e = started(2, 0).await;
    let first_pid = e.health().pid.unwrap();
    let mut a = e.generate(greedy("Hold the slot.", 400)).unwrap();
    let b = e.generate(greedy("And another.", 400)).unwrap();
    assert!(matches!(a.next().await, Some(Event::Started { .. })));
    e.crash_for_test();
    let failed = |evs: &[Event]| match evs.last() {
        Some(Event::Failed(EngineError::Crashed(how))) => how.clone(),
        other => panic!("{other:?}"),
    };
    let how = failed(&events(a).await);
    assert!(how.contains("signal 6 (SIGABRT)"), "{how}");
    assert!(how.contains("restarting in 0.5 s"), "{how}");
    failed(&events(b).await);
    assert_eq!(e.in_flight(), 0);
    // While it is down, requests are refused at once.
    let down = e.state();
    if matches!(down, EngineState::Crashed(_)) {
        assert!(matches!(e.generate(greedy("Now?", 4)), Err(EngineError::Crashed(_))));
    }
    tokio::time::timeout(Duration::from_secs(30), e.ready()).await.expect("restarted").unwrap();
    let h = e.health();
    assert_eq!((h.crashes, h.restarts), (1, 1));
    assert_ne!(h.pid, Some(first_pid));
    assert!(h.last_crash.as_deref().is_some_and(|c| c.starts_with("was killed by signal 6 (SIGABRT)")), "{h:?}");
    let out = e.generate(greedy("Hello there", 6)).unwrap().collect().await.unwrap();
    assert_eq!(out.usage.completion_tokens, 6);
    assert_eq!(e.stats().crashed, 2);

    // Killed from outside (as the OOM killer would), during a generation. (Not SIGSEGV: a Rust
    // process survives one sent by `kill`, as its stack-overflow handler returns.)
    let mut c = e.generate(greedy("Hold the slot.", 400)).unwrap();
    assert!(matches!(c.next().await, Some(Event::Started { .. })));
    let pid = e.health().pid.unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let how = failed(&events(c).await);
    assert!(how.contains("signal 9 (SIGKILL)"), "{how}");
    // The second death in a short time waits twice as long.
    assert!(how.contains("restarting in 1.0 s"), "{how}");
    tokio::time::timeout(Duration::from_secs(30), e.ready()).await.expect("restarted").unwrap();
    assert_eq!((e.health().crashes, e.health().restarts), (2, 2));
    assert!(e.health().last_crash.unwrap().contains("SIGKILL"));
}

#[tokio::test]
async fn a_model_that_cannot_be_loaded_fails_once_and_says_why() {
    let mut c = config(1, 0);
    c.model_path = "/nonexistent/model.gguf".into();
    let e = EngineProcess::start(c, worker(), "test");
    let err = tokio::time::timeout(Duration::from_secs(30), e.ready()).await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "cannot load /nonexistent/model.gguf: no such file");
    assert_eq!(e.state(), EngineState::Failed("no such file".into()));
    assert_eq!(e.generate(greedy("hi", 2)).unwrap_err(), err);
    assert_eq!((e.health().crashes, e.health().restarts), (0, 0));
}

#[tokio::test]
async fn a_worker_command_that_is_not_a_worker_is_a_clear_failure() {
    let not_a_worker = WorkerCommand { program: "true".into(), args: vec![] };
    let e = EngineProcess::start(config(1, 0), not_a_worker, "test");
    let err = tokio::time::timeout(Duration::from_secs(30), e.ready()).await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("the engine worker `true` exited with status 0 before the model was loaded"),
        "{err}"
    );
    let missing = WorkerCommand { program: "/nonexistent/triage".into(), args: vec![] };
    let e = EngineProcess::start(config(1, 0), missing, "test");
    let err = tokio::time::timeout(Duration::from_secs(30), e.ready()).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("cannot start the engine worker `/nonexistent/triage`"), "{err}");
}
