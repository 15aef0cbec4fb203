//! The engine's public face: loading, admission (the bounded queue), and the event stream of one
//! generation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, watch};

/// How to run one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Sequences decoded together (slots); at least 1.
    pub parallel: u32,
    /// Requests that may wait for a free slot beyond `parallel`; past `parallel + queue`
    /// admitted requests, [`Engine::generate`] answers [`EngineError::Busy`].
    pub queue: u32,
    /// Tokens of one sequence, prompt and output together; the engine's KV cache holds
    /// `context * parallel` tokens.
    pub context: u32,
    /// CPU threads llama.cpp uses for each decode step; 0 = the number of cores.
    pub threads: u32,
}

/// Why the engine cannot serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The model file cannot be loaded, or the context cannot be created.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What llama.cpp or the file said.
        reason: String,
    },
    /// Every slot is taken and the queue is full (`capacity` = parallel + queue requests).
    #[error("the local engine is busy: all {capacity} places (parallel sequences + queue) are taken")]
    Busy {
        /// Requests admitted at once.
        capacity: usize,
    },
    /// The prompt does not fit the context of one sequence.
    #[error("the prompt is {prompt} tokens but the context holds {context} tokens (maximum context length)")]
    ContextExceeded {
        /// Prompt tokens, after the chat template.
        prompt: usize,
        /// Tokens of one sequence.
        context: u32,
    },
    /// The chat template is missing, unsupported by llama.cpp, or the messages cannot be put in it.
    #[error("chat template: {0}")]
    Template(String),
    /// llama.cpp failed while decoding.
    #[error("llama.cpp failed to decode: {0}")]
    Decode(String),
    /// The engine's thread is gone.
    #[error("the local engine has stopped")]
    Stopped,
}

/// One chat message, already flattened to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...: passed to the template as is.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 (or less) is greedy: always the most likely token, so the same
    /// prompt always gives the same answer.
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to this (0–1].
    pub top_p: f32,
    /// Seed of the sampler's generator; `None` picks one at random. With a seed, the same
    /// request gives the same answer.
    pub seed: Option<u64>,
}

impl Default for Sampling {
    /// OpenAI's defaults: temperature 1, top_p 1, no seed.
    fn default() -> Self {
        Sampling { temperature: 1.0, top_p: 1.0, seed: None }
    }
}

/// One request to the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The conversation, put through the model's chat template with the assistant's turn opened.
    pub messages: Vec<Message>,
    /// Largest number of tokens to generate; `None`: until the model ends its turn or the
    /// sequence's context is full.
    pub max_tokens: Option<u32>,
    /// Generation ends before the first of these strings; it is not part of the text.
    pub stop: Vec<String>,
    /// Sampling.
    pub sampling: Sampling,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn (an end-of-generation token) or a stop sequence appeared.
    Stop,
    /// `max_tokens` tokens were generated, or the sequence's context is full.
    Length,
}

impl FinishReason {
    /// OpenAI's name: `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens of the templated prompt, as this model tokenises it (special tokens included).
    pub prompt_tokens: u32,
    /// Tokens sampled, the end-of-generation token included when there is one.
    pub completion_tokens: u32,
}

/// What a generation reports, in order: `Started`, any number of `Text`, then `Finished` or
/// `Failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The prompt was read (prefill done); the first token is being generated.
    Started {
        /// Tokens of the templated prompt.
        prompt_tokens: u32,
    },
    /// More text: whole UTF-8 characters, never the start of a stop sequence that may still
    /// complete.
    Text(String),
    /// The generation ended.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// The generation failed.
    Failed(EngineError),
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The generated text.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Token counts.
    pub usage: Usage,
}

/// Counters of an engine since it was loaded (the figures llama.cpp's own server exports as
/// metrics: tokens and seconds of prompt processing and of generation, so that a rate of one
/// over the other is tokens per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests admitted and not yet done (running or waiting for a slot).
    pub in_flight: usize,
    /// Requests admitted at once at most (`parallel + queue`).
    pub capacity: usize,
    /// Generations that ended on their own (stop, length, or failure).
    pub finished: u64,
    /// Generations stopped because their receiver was dropped.
    pub cancelled: u64,
    /// Requests refused because every place was taken.
    pub busy: u64,
    /// Prompt tokens read (prefilled).
    pub prompt_tokens: u64,
    /// Time spent in llama.cpp decoding prompts, in nanoseconds.
    pub prompt_nanos: u64,
    /// Tokens generated (sampled).
    pub generated_tokens: u64,
    /// Time spent in llama.cpp decode steps of generation (all slots of a step together), in
    /// nanoseconds.
    pub generation_nanos: u64,
}

/// The events of one request. Dropping it stops the generation and frees its slot.
#[derive(Debug)]
pub struct Generation {
    rx: mpsc::Receiver<Event>,
}

impl Generation {
    /// The next event; `None` after `Finished` / `Failed`.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Reads the whole answer.
    ///
    /// Errors: the engine's [`EngineError`], or [`EngineError::Stopped`] if the events ended
    /// without a finish.
    pub async fn collect(mut self) -> Result<Output, EngineError> {
        let mut text = String::new();
        while let Some(ev) = self.next().await {
            match ev {
                Event::Started { .. } => {}
                Event::Text(t) => text.push_str(&t),
                Event::Finished { reason, usage } => return Ok(Output { text, finish: reason, usage }),
                Event::Failed(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped)
    }
}

/// Admission bookkeeping shared by the engine and its thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Requests admitted and not done; the single source of truth for busy.
    pub admitted: watch::Sender<usize>,
    pub capacity: usize,
    pub finished: AtomicU64,
    pub cancelled: AtomicU64,
    pub busy: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub prompt_nanos: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub generation_nanos: AtomicU64,
}

/// One admitted request's place; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Shared>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.admitted.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A request on its way to the engine's thread.
#[derive(Debug)]
pub(crate) struct Job {
    pub request: GenerateRequest,
    pub events: mpsc::Sender<Event>,
    pub permit: Permit,
}

/// Events a generation may have outstanding before its slot pauses (a reader that falls this far
/// behind stops the generation from running ahead; it resumes when the reader catches up).
pub(crate) const EVENT_BUFFER: usize = 64;

/// The model and its chat template, shared by the engine's thread and its callers.
pub(crate) struct Model {
    pub llama: LlamaModel,
    template: LlamaChatTemplate,
}

impl Model {
    /// The conversation through the chat template, the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String, EngineError> {
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        self.llama
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| EngineError::Template(format!("llama.cpp cannot apply the model's template: {e}")))
    }

    /// `text` as this model's tokens: BOS added if the model asks for it, special tokens in the
    /// text (`<|im_start|>`) parsed as such, as llama.cpp's server does for templated prompts.
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.llama.vocab().tokenize(text.as_bytes(), true, true)
    }
}

/// The process's llama.cpp backend: initialised once, llama.cpp's log sent to `tracing`.
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load { path: String::new(), reason: format!("llama.cpp backend: {e}") })
}

/// A loaded model and the thread that runs it.
pub struct Engine {
    model: Arc<Model>,
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
    config: EngineConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).field("in_flight", &self.in_flight()).finish()
    }
}

impl Engine {
    /// Loads the model (memory-mapped), checks that llama.cpp supports its chat template, creates
    /// the context and starts the engine's thread. Blocks for as long as loading takes: call it
    /// at start-up or from a blocking task.
    ///
    /// Errors: [`EngineError::Load`] (missing or invalid file, no memory for the context),
    /// [`EngineError::Template`] (no template in the file, or one llama.cpp does not know).
    pub fn load(config: EngineConfig) -> Result<Engine, EngineError> {
        let path = config.model_path.display().to_string();
        let load_err = |reason: String| EngineError::Load { path: path.clone(), reason };
        if config.parallel == 0 || config.context == 0 {
            return Err(load_err("parallel and context must be at least 1".into()));
        }
        if !config.model_path.is_file() {
            return Err(load_err("no such file".into()));
        }
        let backend = backend()?;
        let llama = LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default())
            .map_err(|e| load_err(format!("llama.cpp cannot read the model: {e}")))?;
        let template = llama
            .chat_template(None)
            .map_err(|e| EngineError::Template(format!("the model has no usable chat template: {e}")))?;
        let model = Arc::new(Model { llama, template });
        // Fails here, not on the first request, when llama.cpp does not know the template.
        model.render(&[Message::new("user", "hi")])?;

        let capacity = config.parallel as usize + config.queue as usize;
        let shared = Arc::new(Shared {
            admitted: watch::Sender::new(0),
            capacity,
            finished: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            prompt_nanos: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            generation_nanos: AtomicU64::new(0),
        });
        let (jobs, queue) = sync_channel::<Job>(capacity);
        let (ready_tx, ready_rx) = sync_channel(1);
        let worker = crate::worker::Worker::new(model.clone(), &config, shared.clone());
        std::thread::Builder::new()
            .name("triage-local-engine".into())
            .spawn(move || worker.run(queue, ready_tx))
            .map_err(|e| load_err(format!("cannot start the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(load_err(reason)),
            Err(_) => return Err(load_err("the engine thread ended while starting".into())),
        }
        tracing::info!(
            model = %path,
            parallel = config.parallel,
            queue = config.queue,
            context = config.context,
            "local engine loaded"
        );
        Ok(Engine { model, jobs, shared, config })
    }

    /// Admits `request` and returns its events, or refuses at once.
    ///
    /// Errors: [`EngineError::Busy`] when `parallel + queue` requests are already admitted;
    /// [`EngineError::Stopped`] when the engine's thread is gone. Template, context and decode
    /// errors arrive as [`Event::Failed`].
    pub fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        let capacity = self.shared.capacity;
        let admitted = self.shared.admitted.send_if_modified(|n| {
            if *n < capacity {
                *n += 1;
                true
            } else {
                false
            }
        });
        if !admitted {
            self.shared.busy.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Busy { capacity });
        }
        let permit = Permit(self.shared.clone());
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        match self.jobs.try_send(Job { request, events, permit }) {
            Ok(()) => Ok(Generation { rx }),
            // The channel holds `capacity` jobs and at most `capacity` are admitted, so it is
            // never full here; a full one would be a bookkeeping fault, reported as busy.
            Err(TrySendError::Full(_)) => Err(EngineError::Busy { capacity }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }

    /// True when [`Engine::generate`] would answer [`EngineError::Busy`] now.
    pub fn is_busy(&self) -> bool {
        *self.shared.admitted.borrow() >= self.shared.capacity
    }

    /// Requests admitted and not yet done.
    pub fn in_flight(&self) -> usize {
        *self.shared.admitted.borrow()
    }

    /// Resolves once no request is admitted (every slot free, the queue empty).
    pub async fn until_idle(&self) {
        let mut rx = self.shared.admitted.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Counters since loading.
    pub fn stats(&self) -> EngineStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EngineStats {
            in_flight: self.in_flight(),
            capacity: self.shared.capacity,
            finished: load(&self.shared.finished),
            cancelled: load(&self.shared.cancelled),
            busy: load(&self.shared.busy),
            prompt_tokens: load(&self.shared.prompt_tokens),
            prompt_nanos: load(&self.shared.prompt_nanos),
            generated_tokens: load(&self.shared.generated_tokens),
            generation_nanos: load(&self.shared.generation_nanos),
        }
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The prompt `messages` make: the model's chat template applied, the assistant's turn
    /// opened.
    ///
    /// Errors: [`EngineError::Template`].
    pub fn render(&self, messages: &[Message]) -> Result<String, EngineError> {
        self.model.render(messages)
    }

    /// The number of tokens `text` is for this model, counted as a prompt is (BOS added if the
    /// model wants one, special tokens parsed).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.model.tokenize(text).len()
    }
}
