//! The engine in a supervised child process, so that a fault in native inference code (a
//! segfault in a llama.cpp kernel, an abort, the OOM killer) ends that process and not the
//! gateway.
//!
//! [`EngineProcess`] has the face of an in-process [`crate::Engine`] (`generate` returning a
//! [`Generation`] of [`Event`]s, `stats`, `is_busy`, `until_idle`), and behind it a worker
//! process: the same executable started again with a worker command ([`WorkerCommand`]; for the
//! `triage` binary its hidden `engine-worker` subcommand), connected over a Unix socket in a
//! private directory (mode 0700, removed once the worker connected, and a random token the
//! worker must present). The frames are described in [`wire`].
//!
//! A supervisor task starts the worker, hands it the model to load, and when it dies fails every
//! generation in flight with [`EngineError::Crashed`] (a stream ends with an error; a request
//! not yet answered can go to a fallback), then starts a new one after a backoff: 0.5 s, doubled
//! after each death up to 30 s, back to 0.5 s once a worker stayed up for a minute. A model that
//! cannot be loaded is not retried: the engine stays [`EngineState::Failed`] with the reason.
//!
//! While the worker starts and loads, requests are admitted and wait (as in a queue) until the
//! model is ready; while it is down after a crash they are refused at once.
//!
//! Admission is the gateway's: at most `parallel + queue` generations are admitted, and a place
//! is given back when the worker reports the generation's end (its last event, or the
//! confirmation of a cancellation), so the worker's own queue never overflows.

mod child;
mod wire;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use child::{run_test_worker_if_asked, worker_main, WorkerOptions};
use wire::{FromWorker, ToWorker, WINDOW};

use crate::engine::{tool_selection, EngineConfig, EngineError, EngineStats, Event, GenerateRequest, Generation};
use crate::tools::ToolFormat;

pub(crate) const ENV_SOCKET: &str = "TRIAGE_ENGINE_SOCKET";
pub(crate) const ENV_TOKEN: &str = "TRIAGE_ENGINE_TOKEN";
pub(crate) const ENV_LABEL: &str = "TRIAGE_ENGINE_LABEL";

/// The hidden subcommand of the `triage` binary that runs an engine worker
/// ([`worker_main`]).
pub const WORKER_SUBCOMMAND: &str = "engine-worker";

/// First wait before restarting a worker that died.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker up this long is taken as healthy: the next death waits [`FIRST_BACKOFF`] again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a started worker has to connect back.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start an engine worker process: a program and its arguments. The worker finds its
/// socket and token in its environment, so the command may be wrapped (`nice`, `taskset`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// This process's own executable with `args` (e.g. [`WORKER_SUBCOMMAND`]).
    ///
    /// Errors: the executable's path cannot be found (`std::env::current_exe`).
    pub fn current_exe(args: &[&str]) -> Result<WorkerCommand, String> {
        let program = std::env::current_exe().map_err(|e| format!("cannot find this program's executable: {e}"))?;
        Ok(WorkerCommand { program, args: args.iter().map(OsString::from).collect() })
    }

    /// `program args...` for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where an [`EngineProcess`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// The worker is starting or loading the model; requests wait for it.
    Loading,
    /// The model is loaded and the worker takes requests.
    Ready,
    /// The model cannot be loaded (a missing or invalid file, no usable chat template, a worker
    /// command that is not a worker): not retried. The reason, in words.
    Failed(String),
    /// The worker died (how, in words) and a new one starts after a backoff.
    Crashed(String),
}

impl EngineState {
    /// `loading`, `ready`, `failed: <reason>` or `crashed: <how>`.
    pub fn describe(&self) -> String {
        match self {
            EngineState::Loading => "loading".into(),
            EngineState::Ready => "ready".into(),
            EngineState::Failed(r) => format!("failed: {r}"),
            EngineState::Crashed(r) => format!("crashed: {r}"),
        }
    }

    /// `loading`, `ready`, `failed` or `crashed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EngineState::Loading => "loading",
            EngineState::Ready => "ready",
            EngineState::Failed(_) => "failed",
            EngineState::Crashed(_) => "crashed",
        }
    }
}

/// The supervision record of an [`EngineProcess`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHealth {
    /// Where it is now.
    pub state: EngineState,
    /// Worker processes that died so far.
    pub crashes: u64,
    /// Workers started again after a death.
    pub restarts: u64,
    /// How the last worker that died ended (e.g. `killed by signal 11 (SIGSEGV)`).
    pub last_crash: Option<String>,
    /// The process id of the current worker, once started.
    pub pid: Option<u32>,
}

/// Counters kept by the gateway side.
#[derive(Debug, Default)]
struct Counters {
    finished: AtomicU64,
    cancelled: AtomicU64,
    busy: AtomicU64,
    crashed: AtomicU64,
    crashes: AtomicU64,
    restarts: AtomicU64,
}

/// What the supervisor, the reader of the worker's frames and the generations share.
struct Shared {
    config: EngineConfig,
    command: WorkerCommand,
    label: String,
    capacity: usize,
    /// Generations admitted and not ended.
    admitted: watch::Sender<usize>,
    /// Changed only while `gens` is locked, so that a generation is admitted either before a
    /// crash (and failed by it) or after (and sent to the next worker).
    state: watch::Sender<EngineState>,
    /// Each running generation's event queue, by id.
    gens: Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>,
    /// The model's tool-call format (known once loaded).
    tools: Mutex<Result<ToolFormat, String>>,
    /// Where the model's prompt format comes from (known once loaded).
    template: Mutex<Option<crate::TemplateSource>>,
    /// Frames for the worker (the current one; stale frames are skipped or harmless).
    out: mpsc::UnboundedSender<ToWorker>,
    next_id: AtomicU64,
    counters: Counters,
    /// The engine counters of the workers that died, summed, and the current worker's last report.
    engine: Mutex<(EngineStats, EngineStats)>,
    pid: AtomicU32,
    last_crash: Mutex<Option<String>>,
}

impl Shared {
    fn release(&self) {
        self.admitted.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Moves to `state` (not `Ready`), failing every running generation with `error`; returns
    /// how many there were.
    fn fail_all(&self, state: EngineState, error: &EngineError) -> usize {
        let Ok(mut gens) = self.gens.lock() else { return 0 };
        self.state.send_replace(state);
        let n = gens.len();
        for (_, tx) in gens.drain() {
            self.release();
            let _ = tx.send(Event::Failed(error.clone()));
        }
        n
    }

    fn set_state(&self, state: EngineState) {
        if let Ok(_gens) = self.gens.lock() {
            self.state.send_replace(state);
        }
    }

    /// A frame from a ready worker.
    fn on_frame(&self, frame: FromWorker) {
        match frame {
            FromWorker::Event { id, event } => {
                let terminal = matches!(event, Event::Finished { .. } | Event::Failed(_));
                let Ok(mut gens) = self.gens.lock() else { return };
                if terminal {
                    if let Some(tx) = gens.remove(&id) {
                        // The place first: a reader that saw the end can be admitted again.
                        self.release();
                        self.counters.finished.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(event);
                    }
                } else if let Some(tx) = gens.get(&id) {
                    let _ = tx.send(event);
                }
            }
            FromWorker::Cancelled { id } => {
                let removed = self.gens.lock().ok().and_then(|mut g| g.remove(&id));
                if removed.is_some() {
                    self.release();
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
            FromWorker::Stats { stats } => {
                if let Ok(mut e) = self.engine.lock() {
                    e.1 = stats;
                }
            }
            other => tracing::warn!(provider = %self.label, frame = ?other, "unexpected frame from the engine worker"),
        }
    }

    /// The current worker's counters become part of the totals (it died).
    fn bank_engine_stats(&self) {
        if let Ok(mut e) = self.engine.lock() {
            let last = std::mem::take(&mut e.1);
            let b = &mut e.0;
            b.prompt_tokens += last.prompt_tokens;
            b.prompt_nanos += last.prompt_nanos;
            b.generated_tokens += last.generated_tokens;
            b.generation_nanos += last.generation_nanos;
        }
    }

    fn load_error(&self, reason: String) -> EngineError {
        EngineError::Load { path: self.config.model_path.display().to_string(), reason }
    }
}

/// One generation on the gateway's side: the events the reader routed to it, credit for the
/// worker every `WINDOW / 2` events read, and a cancellation when dropped before its end.
pub(crate) struct RemoteGeneration {
    id: u64,
    rx: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    unacknowledged: u32,
    done: bool,
}

impl std::fmt::Debug for RemoteGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteGeneration").field("id", &self.id).field("done", &self.done).finish()
    }
}

impl RemoteGeneration {
    pub(crate) async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await;
        match &ev {
            None | Some(Event::Finished { .. } | Event::Failed(_)) => self.done = true,
            Some(_) => {
                self.unacknowledged += 1;
                if self.unacknowledged >= WINDOW / 2 {
                    let _ = self.shared.out.send(ToWorker::Credit { id: self.id, n: self.unacknowledged });
                    self.unacknowledged = 0;
                }
            }
        }
        ev
    }
}

impl Drop for RemoteGeneration {
    fn drop(&mut self) {
        let running = self.shared.gens.lock().is_ok_and(|g| g.contains_key(&self.id));
        if !self.done && running {
            let _ = self.shared.out.send(ToWorker::Cancel { id: self.id });
        }
    }
}

/// A local engine in a supervised worker process (see the module docs).
pub struct EngineProcess {
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EngineProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineProcess")
            .field("label", &self.shared.label)
            .field("config", &self.shared.config)
            .field("state", &*self.shared.state.borrow())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        // The worker's `Child` is killed when the supervisor's future is dropped.
        if let Some(s) = &self.supervisor {
            s.abort();
        }
    }
}

impl EngineProcess {
    /// Starts the supervisor of a worker that runs `config`'s model, named `label` in logs
    /// (the provider's name). Returns at once, [`EngineState::Loading`]; the worker runs on the
    /// current tokio runtime's tasks. Without a runtime the engine is
    /// [`EngineState::Failed`].
    pub fn start(config: EngineConfig, command: WorkerCommand, label: &str) -> EngineProcess {
        let (out, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            capacity: config.parallel as usize + config.queue as usize,
            config,
            command,
            label: label.to_owned(),
            admitted: watch::Sender::new(0),
            state: watch::Sender::new(EngineState::Loading),
            gens: Mutex::default(),
            tools: Mutex::new(Err("the model is not loaded yet".into())),
            template: Mutex::new(None),
            out,
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            engine: Mutex::default(),
            pid: AtomicU32::new(0),
            last_crash: Mutex::new(None),
        });
        let supervisor = match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(rt.spawn(supervise(shared.clone(), out_rx))),
            Err(_) => {
                shared.set_state(EngineState::Failed("no tokio runtime to supervise the engine worker from".into()));
                None
            }
        };
        EngineProcess { shared, supervisor }
    }

    /// Admits `request` and returns its events, or refuses at once. While the worker loads, the
    /// request waits for it.
    ///
    /// Errors: [`EngineError::Load`] when the model cannot be loaded; [`EngineError::Crashed`]
    /// while the worker is down after a crash; [`EngineError::Tools`] when the loaded model
    /// cannot serve the request's tools; [`EngineError::Busy`] when `parallel + queue` requests
    /// are admitted. What the worker finds (template, context, grammar, decode errors, a crash
    /// under the request) arrives as [`Event::Failed`].
    pub fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        let sh = &self.shared;
        let mut gens = sh.gens.lock().map_err(|_| EngineError::Stopped)?;
        match &*sh.state.borrow() {
            EngineState::Failed(reason) => return Err(sh.load_error(reason.clone())),
            EngineState::Crashed(how) => return Err(EngineError::Crashed(how.clone())),
            EngineState::Ready => {
                let tools = sh.tools.lock().map_err(|_| EngineError::Stopped)?;
                tool_selection(&request, &tools)?;
            }
            EngineState::Loading => {}
        }
        let capacity = sh.capacity;
        let admitted = sh.admitted.send_if_modified(|n| {
            if *n < capacity {
                *n += 1;
                true
            } else {
                false
            }
        });
        if !admitted {
            sh.counters.busy.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Busy { capacity });
        }
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        gens.insert(id, tx);
        drop(gens);
        let _ = sh.out.send(ToWorker::Generate { id, request });
        Ok(Generation::remote(RemoteGeneration { id, rx, shared: sh.clone(), unacknowledged: 0, done: false }))
    }

    /// True when [`EngineProcess::generate`] would answer [`EngineError::Busy`] now.
    pub fn is_busy(&self) -> bool {
        *self.shared.admitted.borrow() >= self.shared.capacity
    }

    /// Requests admitted and not yet ended.
    pub fn in_flight(&self) -> usize {
        *self.shared.admitted.borrow()
    }

    /// Resolves once no request is admitted.
    pub async fn until_idle(&self) {
        let mut rx = self.shared.admitted.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Resolves once the model is loaded, or failed to load (not on a crash: a new worker
    /// comes).
    ///
    /// Errors: [`EngineError::Load`] with the reason it cannot be loaded.
    pub async fn ready(&self) -> Result<(), EngineError> {
        let mut rx = self.shared.state.subscribe();
        let state = rx
            .wait_for(|s| matches!(s, EngineState::Ready | EngineState::Failed(_)))
            .await
            .map(|s| s.clone())
            .map_err(|_| EngineError::Stopped)?;
        match state {
            EngineState::Failed(reason) => Err(self.shared.load_error(reason)),
            _ => Ok(()),
        }
    }

    /// Where the engine is now.
    pub fn state(&self) -> EngineState {
        self.shared.state.borrow().clone()
    }

    /// State, crashes and restarts, the worker's process id.
    pub fn health(&self) -> EngineHealth {
        let c = &self.shared.counters;
        let pid = self.shared.pid.load(Ordering::Relaxed);
        EngineHealth {
            state: self.state(),
            crashes: c.crashes.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            last_crash: self.shared.last_crash.lock().ok().and_then(|c| c.clone()),
            pid: (pid != 0).then_some(pid),
        }
    }

    /// Counters since the engine was started, over every worker it had: requests as the gateway
    /// saw them end (`crashed` = failed by a worker's death), tokens and seconds as the workers
    /// reported them (at the end of every generation and every second while one runs; what a
    /// worker did after its last report before dying is not counted).
    pub fn stats(&self) -> EngineStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (base, last) = self.shared.engine.lock().map(|e| *e).unwrap_or_default();
        EngineStats {
            in_flight: self.in_flight(),
            capacity: self.shared.capacity,
            finished: load(&c.finished),
            cancelled: load(&c.cancelled),
            busy: load(&c.busy),
            crashed: load(&c.crashed),
            prompt_tokens: base.prompt_tokens + last.prompt_tokens,
            prompt_nanos: base.prompt_nanos + last.prompt_nanos,
            generated_tokens: base.generated_tokens + last.generated_tokens,
            generation_nanos: base.generation_nanos + last.generation_nanos,
        }
    }

    /// The model's tool-call format, or why it cannot call tools (or is not loaded yet).
    ///
    /// Errors: a sentence saying why.
    pub fn tool_format(&self) -> Result<ToolFormat, String> {
        self.shared.tools.lock().map_err(|_| "the engine is gone".to_owned())?.clone()
    }

    /// Where the model's prompt format comes from; `None` until a worker has loaded it.
    pub fn template_source(&self) -> Option<crate::TemplateSource> {
        self.shared.template.lock().ok().and_then(|t| t.clone())
    }

    /// The configuration it runs.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Test only: asks the worker to abort (SIGABRT), as a crash in native code would end it.
    /// Only a worker started with [`WorkerOptions::allow_crash`] (test builds) obeys; others
    /// log the request and ignore it.
    pub fn crash_for_test(&self) {
        let _ = self.shared.out.send(ToWorker::Crash);
    }
}

/// How one worker's life ended.
enum Ended {
    /// It cannot serve this model: do not start another.
    LoadFailed(String),
    /// It died (how, in words): start another.
    Died(String),
}

async fn supervise(shared: Arc<Shared>, mut out_rx: mpsc::UnboundedReceiver<ToWorker>) {
    let mut delay = FIRST_BACKOFF;
    loop {
        let began = Instant::now();
        let ended = run_worker(&shared, &mut out_rx).await;
        shared.pid.store(0, Ordering::Relaxed);
        shared.bank_engine_stats();
        match ended {
            Ended::LoadFailed(reason) => {
                tracing::error!(provider = %shared.label, error = %reason, "local model not loaded; the provider is unavailable");
                let error = shared.load_error(reason.clone());
                shared.fail_all(EngineState::Failed(reason), &error);
                return;
            }
            Ended::Died(how) => {
                if began.elapsed() >= STABLE_AFTER {
                    delay = FIRST_BACKOFF;
                }
                shared.counters.crashes.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut c) = shared.last_crash.lock() {
                    *c = Some(how.clone());
                }
                let why = format!("the worker process {how}; restarting in {:.1} s", delay.as_secs_f64());
                let failed = shared.fail_all(EngineState::Crashed(why.clone()), &EngineError::Crashed(why.clone()));
                shared.counters.crashed.fetch_add(failed as u64, Ordering::Relaxed);
                tracing::error!(provider = %shared.label, how = %how, requests_failed = failed, restart_in_ms = delay.as_millis() as u64, "local engine worker died");
                // Frames queued for the dead worker are stale: drop them while waiting.
                let wait = tokio::time::sleep(delay);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        f = out_rx.recv() => if f.is_none() { return },
                    }
                }
                delay = (delay * 2).min(MAX_BACKOFF);
                shared.counters.restarts.fetch_add(1, Ordering::Relaxed);
                shared.set_state(EngineState::Loading);
            }
        }
    }
}

/// A directory only this user can enter, removed with what is in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> std::io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU64 = AtomicU64::new(0);
        let name =
            format!("triage-engine-{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), fastrand::u32(..));
        // A socket path holds at most 107 bytes: a long TMPDIR falls back to /tmp.
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() + name.len() + 16 > 100 {
            base = PathBuf::from("/tmp");
        }
        let path = base.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(PrivateDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a process ended, in words: `exited with status 1`, `killed by signal 11 (SIGSEGV)`.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            let core = if status.core_dumped() { ", core dumped" } else { "" };
            format!("was killed by signal {sig}{name}{core}")
        }
        None => format!("ended ({status})"),
    }
}

/// Waits for `child` to end, killing it if it has not within 2 s, and says how it ended.
async fn reap(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => describe(status),
        _ => {
            let _ = child.kill().await;
            match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("could not be waited for: {e}"),
            }
        }
    }
}

/// Starts a worker, loads the model in it and serves it until it dies.
async fn run_worker(shared: &Arc<Shared>, out_rx: &mut mpsc::UnboundedReceiver<ToWorker>) -> Ended {
    let cmd = &shared.command;
    let dir = match PrivateDir::new() {
        Ok(d) => d,
        Err(e) => return Ended::LoadFailed(format!("cannot create a directory for the engine's socket: {e}")),
    };
    let socket = dir.path().join("engine.sock");
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => return Ended::LoadFailed(format!("cannot listen on {}: {e}", socket.display())),
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut child = match tokio::process::Command::new(&cmd.program)
        .args(&cmd.args)
        .env(ENV_SOCKET, &socket)
        .env(ENV_TOKEN, &token)
        .env(ENV_LABEL, &shared.label)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Ended::LoadFailed(format!("cannot start the engine worker `{}`: {e}", cmd.display())),
    };
    shared.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
    // Before the model is loaded, a worker that exits on its own cannot serve (a command that
    // is not a worker, a bad environment); one killed by a signal crashed and is restarted.
    let early = |status: std::io::Result<std::process::ExitStatus>| match status {
        Ok(s) if s.code().is_some() => Ended::LoadFailed(format!(
            "the engine worker `{}` {} before the model was loaded (see the log above)",
            cmd.display(),
            describe(s)
        )),
        Ok(s) => Ended::Died(describe(s)),
        Err(e) => Ended::Died(format!("could not be waited for: {e}")),
    };
    let stream = tokio::select! {
        r = listener.accept() => match r {
            Ok((s, _)) => s,
            Err(e) => return Ended::Died(format!("did not connect: {e}; {}", reap(&mut child).await)),
        },
        status = child.wait() => return early(status),
        () = tokio::time::sleep(CONNECT_TIMEOUT) => {
            return Ended::LoadFailed(format!(
                "the engine worker `{}` did not connect within {} s ({})",
                cmd.display(), CONNECT_TIMEOUT.as_secs(), reap(&mut child).await
            ))
        }
    };
    drop(listener);
    drop(dir);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(1 << 16, rd);

    let hello = tokio::select! {
        f = wire::read::<FromWorker, _>(&mut rd) => f,
        status = child.wait() => return early(status),
    };
    match hello {
        Ok(Some(FromWorker::Hello { token: t, .. })) if t == token => {}
        other => {
            let _ = child.kill().await;
            return Ended::LoadFailed(format!("the engine worker did not say hello with its token (got {other:?})"));
        }
    }
    if let Err(e) = wr.write_all(&wire::encode(&ToWorker::Load { config: shared.config.clone() })).await {
        return Ended::Died(format!("did not take its model ({e}); {}", reap(&mut child).await));
    }
    let ready = tokio::select! {
        f = wire::read::<FromWorker, _>(&mut rd) => f,
        status = child.wait() => return early(status),
    };
    match ready {
        Ok(Some(FromWorker::Ready { tools, template })) => {
            if let Ok(mut t) = shared.tools.lock() {
                *t = tools;
            }
            if let Ok(mut t) = shared.template.lock() {
                *t = Some(template);
            }
            shared.set_state(EngineState::Ready);
            tracing::info!(provider = %shared.label, pid = child.id().unwrap_or(0), "local engine worker ready");
        }
        Ok(Some(FromWorker::LoadFailed { error })) => {
            let _ = reap(&mut child).await;
            return Ended::LoadFailed(match error {
                EngineError::Load { reason, .. } => reason,
                e => e.to_string(),
            });
        }
        Ok(Some(other)) => {
            let _ = child.kill().await;
            return Ended::LoadFailed(format!("the engine worker answered {other:?} to Load"));
        }
        Ok(None) | Err(_) => return Ended::Died(reap(&mut child).await),
    }

    let reader = async {
        loop {
            match wire::read::<FromWorker, _>(&mut rd).await {
                Ok(Some(f)) => shared.on_frame(f),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(provider = %shared.label, error = %e, "the engine worker's stream broke");
                    return;
                }
            }
        }
    };
    let writer = async {
        let mut buf = Vec::with_capacity(1 << 16);
        while let Some(first) = out_rx.recv().await {
            buf.clear();
            let mut next = Some(first);
            while let Some(frame) = next {
                // A generation failed by an earlier worker's death is not sent to this one.
                let stale = matches!(&frame, ToWorker::Generate { id, .. }
                    if !shared.gens.lock().is_ok_and(|g| g.contains_key(id)));
                if !stale {
                    buf.extend_from_slice(&wire::encode(&frame));
                }
                next = out_rx.try_recv().ok();
            }
            if !buf.is_empty() && wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
        _ = child.wait() => {}
    }
    Ended::Died(reap(&mut child).await)
}
