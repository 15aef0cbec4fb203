//! The engine worker process: connects back to the gateway, loads the model in an in-process
//! [`Engine`], and serves the frames of [`super::wire`] until the gateway hangs up.
//!
//! Threads: the engine's own thread decodes; one tokio thread reads frames, runs one small task
//! per generation that forwards its events (as far as its credit allows), and one task writes
//! the frames out, several at a time when several are ready.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::Instrument;

use super::wire::{self, FromWorker, ToWorker, WINDOW};
use super::{ENV_LABEL, ENV_SOCKET, ENV_TOKEN};
use crate::engine::{Engine, EngineError, Event, Generation};

/// How a worker process behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Honour the test-only crash request ([`crate::EngineProcess::crash_for_test`]) by
    /// aborting. Only test builds set this; a worker without it logs and ignores the request.
    pub allow_crash: bool,
}

/// How often the engine's counters are sent while generations run.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The worker's entry point: reads the socket path and token from the environment
/// (`TRIAGE_ENGINE_SOCKET`, `TRIAGE_ENGINE_TOKEN`, set by [`crate::EngineProcess`]), serves the
/// gateway until it hangs up, and returns the process's exit code (failure when the environment
/// or the connection is wrong; a model that cannot be loaded is reported to the gateway and
/// also ends in failure).
pub fn worker_main(options: WorkerOptions) -> ExitCode {
    let (Some(socket), Some(token)) = (std::env::var_os(ENV_SOCKET), std::env::var(ENV_TOKEN).ok()) else {
        eprintln!(
            "triage engine worker: {ENV_SOCKET} and {ENV_TOKEN} are not set; this process is started by the gateway, not by hand"
        );
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("triage engine worker: cannot start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let label = std::env::var(ENV_LABEL).unwrap_or_default();
    let span = tracing::info_span!("engine_worker", provider = %label, pid = std::process::id());
    match rt.block_on(serve(socket.into(), token, options).instrument(span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "local engine worker stopped");
            ExitCode::FAILURE
        }
    }
}

/// A test harness's worker entry point: when this process was started as an engine worker (its
/// environment names a socket), serves as one and ends the process; otherwise returns at once.
/// For tests that run the gateway in-process: an `#[ignore]`d test calls this, and the
/// provider's `worker` command runs the test binary with that one test (see the gateway's
/// tests). Crash requests are honoured.
pub fn run_test_worker_if_asked() {
    if std::env::var_os(ENV_SOCKET).is_some() {
        let code = worker_main(WorkerOptions { allow_crash: true });
        std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
    }
}

/// What the reader knows of a running generation's forwarder.
struct Forwarding {
    credit: Arc<Semaphore>,
    cancel: Arc<Notify>,
}

type Running = Arc<Mutex<HashMap<u64, Forwarding>>>;

async fn serve(socket: std::path::PathBuf, token: String, options: WorkerOptions) -> Result<(), String> {
    let stream =
        UnixStream::connect(&socket).await.map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(1 << 16, rd);
    let (out, mut frames) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(1 << 16);
        while let Some(first) = frames.recv().await {
            buf.clear();
            buf.extend_from_slice(&first);
            while let Ok(more) = frames.try_recv() {
                buf.extend_from_slice(&more);
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let send = |f: &FromWorker| {
        let _ = out.send(wire::encode(f));
    };
    send(&FromWorker::Hello { token, pid: std::process::id() });
    let config = match wire::read::<ToWorker, _>(&mut rd).await {
        Ok(Some(ToWorker::Load { config })) => config,
        Ok(None) => return Ok(()),
        Ok(Some(other)) => return Err(format!("expected Load, got {other:?}")),
        Err(e) => return Err(format!("reading the Load frame: {e}")),
    };
    let engine = match Engine::load(config) {
        Ok(e) => Arc::new(e),
        Err(error) => {
            let message = error.to_string();
            send(&FromWorker::LoadFailed { error });
            drop(out);
            let _ = writer.await;
            return Err(message);
        }
    };
    send(&FromWorker::Ready { tools: engine.tool_format(), template: engine.template_source().clone() });

    let running: Running = Arc::default();
    let ticker = {
        let (engine, out) = (engine.clone(), out.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(STATS_EVERY);
            loop {
                every.tick().await;
                if engine.in_flight() > 0 {
                    let _ = out.send(wire::encode(&FromWorker::Stats { stats: engine.stats() }));
                }
            }
        })
    };
    let result = loop {
        let frame = match wire::read::<ToWorker, _>(&mut rd).await {
            Ok(Some(f)) => f,
            // The gateway hung up: it is shutting down, or gone.
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("reading a frame: {e}")),
        };
        match frame {
            ToWorker::Generate { id, request } => match engine.generate(request) {
                Ok(g) => {
                    let f = Forwarding { credit: Arc::new(Semaphore::new(WINDOW as usize)), cancel: Arc::default() };
                    let (credit, cancel) = (f.credit.clone(), f.cancel.clone());
                    if let Ok(mut r) = running.lock() {
                        r.insert(id, f);
                    }
                    tokio::spawn(forward(id, g, credit, cancel, out.clone(), engine.clone(), running.clone()));
                }
                Err(e) => {
                    send(&FromWorker::Stats { stats: engine.stats() });
                    send(&FromWorker::Event { id, event: Event::Failed(e) });
                }
            },
            ToWorker::Cancel { id } => {
                if let Some(f) = running.lock().ok().and_then(|r| r.get(&id).map(|f| f.cancel.clone())) {
                    f.notify_one();
                }
            }
            ToWorker::Credit { id, n } => {
                if let Some(c) = running.lock().ok().and_then(|r| r.get(&id).map(|f| f.credit.clone())) {
                    c.add_permits(n as usize);
                }
            }
            ToWorker::Crash if options.allow_crash => {
                tracing::warn!("crash requested (test build): aborting");
                std::process::abort();
            }
            ToWorker::Crash => tracing::warn!("a crash request was ignored: this worker is not a test build"),
            ToWorker::Load { .. } => tracing::warn!("a second Load frame was ignored"),
        }
    };
    ticker.abort();
    result
}

/// Sends `g`'s events as frames, one credit each; on cancellation stops it, waits until the
/// engine let go of it, and confirms.
async fn forward(
    id: u64,
    mut g: Generation,
    credit: Arc<Semaphore>,
    cancel: Arc<Notify>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    engine: Arc<Engine>,
    running: Running,
) {
    let send = |f: &FromWorker| {
        let _ = out.send(wire::encode(f));
    };
    let cancelled = loop {
        tokio::select! {
            biased;
            () = cancel.notified() => break true,
            permit = credit.acquire() => match permit {
                Ok(p) => p.forget(),
                Err(_) => break true,
            },
        }
        let event = tokio::select! {
            biased;
            () = cancel.notified() => break true,
            e = g.next() => e,
        };
        let event = event.unwrap_or(Event::Failed(EngineError::Stopped));
        let terminal = matches!(event, Event::Finished { .. } | Event::Failed(_));
        if terminal {
            // The counters first: the gateway's figures include this generation when it ends.
            send(&FromWorker::Stats { stats: engine.stats() });
        }
        send(&FromWorker::Event { id, event });
        if terminal {
            break false;
        }
    };
    if let Ok(mut r) = running.lock() {
        r.remove(&id);
    }
    if cancelled {
        g.stop().await;
        send(&FromWorker::Stats { stats: engine.stats() });
        send(&FromWorker::Cancelled { id });
    }
}
