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
use tokio::sync::{mpsc, oneshot, watch};

use crate::known::TemplateSource;
use crate::template::ChatTemplate;
use crate::tools::ToolFormat;

/// How to run one model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// A chat template (Jinja) to use instead of the model file's; `None`: the file's, or, when
    /// the file has none that can be run, the known template of the model's family.
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// Why the engine cannot serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
    /// The chat template is missing, can be run neither as Jinja nor by llama.cpp, or refuses
    /// the messages.
    #[error("chat template: {0}")]
    Template(String),
    /// The request's tools cannot be served: the model's template does not support tools,
    /// `tool_choice` names no given tool, or a tool's parameter schema cannot be turned into a
    /// grammar.
    #[error("tools: {0}")]
    Tools(String),
    /// llama.cpp failed while decoding.
    #[error("llama.cpp failed to decode: {0}")]
    Decode(String),
    /// The engine's thread is gone.
    #[error("the local engine has stopped")]
    Stopped,
    /// The engine's worker process died (a crash in native code, an abort, the OOM killer) or
    /// is being restarted after such a death: `0` says how it died and when it comes back.
    #[error("the local engine crashed: {0}")]
    Crashed(String),
}

/// One chat message, its content already flattened to text.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...: passed to the template as is.
    pub role: String,
    /// The text (empty for an assistant turn that only calls tools).
    pub content: String,
    /// The tool calls of an assistant turn.
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the function's name, when known (some templates print it).
    pub name: Option<String>,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into(), ..Message::default() }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// JSON Schema of its arguments (an object schema); it constrains the generated arguments.
    pub parameters: serde_json::Value,
}

/// One call of a tool, generated or from an earlier assistant turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_` and 24 letters and digits, or 9 letters and digits for Mistral).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object as text.
    pub arguments: String,
}

/// Whether and which tools the model must call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ToolChoice {
    /// The model decides; once it opens a call (the format's marker), a lazy grammar keeps the
    /// call well-formed.
    #[default]
    Auto,
    /// No call: the tools are not shown to the template and the output is plain text.
    None,
    /// The model must call one of the tools (a grammar forces the call).
    Required,
    /// The model must call this function.
    Function(String),
}

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Functions the model may call; empty for none.
    pub tools: Vec<Tool>,
    /// Whether and which of `tools` must be called.
    pub tool_choice: ToolChoice,
    /// Whether one turn may hold several calls (Hermes and Mistral formats; Llama 3 makes one).
    pub parallel_tool_calls: bool,
    /// Reuse the KV cache a free sequence holds from an earlier request that started the same
    /// way, reading only the rest of the prompt (llama.cpp server's `cache_prompt`); false reads
    /// the whole prompt again (a benchmark of prompt processing wants that).
    pub cache_prompt: bool,
}

impl Default for GenerateRequest {
    /// No messages, no limit, no stop, default sampling, no tools (parallel calls allowed, as
    /// OpenAI's default), the prompt cache used.
    fn default() -> Self {
        GenerateRequest {
            messages: Vec::new(),
            max_tokens: None,
            stop: Vec::new(),
            sampling: Sampling::default(),
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
            cache_prompt: true,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FinishReason {
    /// The model ended its turn (an end-of-generation token) or a stop sequence appeared.
    Stop,
    /// `max_tokens` tokens were generated, or the sequence's context is full.
    Length,
    /// The model's turn holds tool calls (whatever ended it).
    ToolCalls,
}

impl FinishReason {
    /// OpenAI's name: `stop`, `length` or `tool_calls`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Tokens of the templated prompt, as this model tokenises it (special tokens included).
    pub prompt_tokens: u32,
    /// Tokens sampled, the end-of-generation token included when there is one.
    pub completion_tokens: u32,
    /// Of `prompt_tokens`, those not decoded again because the sequence's KV cache already held
    /// them from an earlier request that started the same way (prompt caching).
    pub cached_tokens: u32,
}

/// What a generation reports, in order: `Started`, any number of `Text`, at most one
/// `ToolCalls`, then `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// The prompt was read (prefill done); the first token is being generated.
    Started {
        /// Tokens of the templated prompt.
        prompt_tokens: u32,
    },
    /// More text: whole UTF-8 characters, never the start of a stop sequence that may still
    /// complete.
    Text(String),
    /// The tool calls of the turn, parsed once the generation ended (the call text itself is
    /// never sent as `Text`); `Finished` follows with [`FinishReason::ToolCalls`].
    ToolCalls(Vec<ToolCall>),
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
    /// The generated text, tool calls left out.
    pub text: String,
    /// The tool calls; empty when there are none.
    pub tool_calls: Vec<ToolCall>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Token counts.
    pub usage: Usage,
}

/// Counters of an engine since it was loaded (the figures llama.cpp's own server exports as
/// metrics: tokens and seconds of prompt processing and of generation, so that a rate of one
/// over the other is tokens per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
    /// Requests that failed because the engine's worker process died under them (always 0 for
    /// an in-process [`Engine`]; see [`crate::EngineProcess`]).
    pub crashed: u64,
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
///
/// The same type for both engines: an in-process [`Engine`]'s generation reads the engine
/// thread's channel; an [`crate::EngineProcess`]'s reads what the worker process sent, and on
/// drop asks the worker to stop it.
#[derive(Debug)]
pub struct Generation {
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// The events, and what resolves once the engine gave the request's place back.
    Local(mpsc::Receiver<Event>, oneshot::Receiver<()>),
    Remote(crate::process::RemoteGeneration),
}

impl Generation {
    pub(crate) fn local(rx: mpsc::Receiver<Event>, released: oneshot::Receiver<()>) -> Generation {
        Generation { source: Source::Local(rx, released) }
    }

    pub(crate) fn remote(r: crate::process::RemoteGeneration) -> Generation {
        Generation { source: Source::Remote(r) }
    }

    /// The next event; `None` after `Finished` / `Failed`.
    pub async fn next(&mut self) -> Option<Event> {
        match &mut self.source {
            Source::Local(rx, _) => rx.recv().await,
            Source::Remote(r) => r.next().await,
        }
    }

    /// Stops an in-process generation and waits until the engine thread has let go of it (its
    /// slot or queue place is free); the events not read are dropped.
    pub(crate) async fn stop(self) {
        match self.source {
            Source::Local(mut rx, released) => {
                // Closing makes the engine drop the request at its next step (or when it takes
                // it from its queue); the place is free once the permit is gone.
                rx.close();
                while rx.recv().await.is_some() {}
                let _ = released.await;
            }
            Source::Remote(r) => drop(r),
        }
    }

    /// Reads the whole answer.
    ///
    /// Errors: the engine's [`EngineError`], or [`EngineError::Stopped`] if the events ended
    /// without a finish.
    pub async fn collect(mut self) -> Result<Output, EngineError> {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        while let Some(ev) = self.next().await {
            match ev {
                Event::Started { .. } => {}
                Event::Text(t) => text.push_str(&t),
                Event::ToolCalls(calls) => tool_calls.extend(calls),
                Event::Finished { reason, usage } => return Ok(Output { text, tool_calls, finish: reason, usage }),
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

/// One admitted request's place; dropping it gives the place back, then resolves the
/// generation's `released` (the field is dropped after `drop` ran).
#[derive(Debug)]
pub(crate) struct Permit(Arc<Shared>, #[allow(dead_code)] oneshot::Sender<()>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.admitted.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A request on its way to the engine's thread.
#[derive(Debug)]
pub(crate) struct Job {
    pub request: GenerateRequest,
    /// Before `events`: a job dropped unstarted gives its place back before its reader can see
    /// the channel close.
    pub permit: Permit,
    pub events: mpsc::Sender<Event>,
    /// How tool calls are generated and read, when the request may call tools.
    pub tools: Option<ToolPlan>,
}

/// A request's tool calling, checked and prepared before it is queued.
#[derive(Debug, Clone)]
pub(crate) struct ToolPlan {
    pub format: ToolFormat,
    /// GBNF, start rule [`crate::tools::GRAMMAR_ROOT`].
    pub grammar: String,
    /// Applied only once a marker appears (`auto`), or from the first token (a call is forced).
    pub lazy: bool,
}

/// Events a generation may have outstanding before its slot pauses (a reader that falls this far
/// behind stops the generation from running ahead; it resumes when the reader catches up).
pub(crate) const EVENT_BUFFER: usize = 64;

/// The model and its chat template, shared by the engine's thread and its callers.
///
/// Every prompt is rendered by the template run as Jinja (MiniJinja), tool requests or not, so
/// that a conversation gets the same prompt whether or not it offers tools, and templates that
/// llama.cpp's built-in matcher does not recognise still work. When MiniJinja cannot run the
/// template (a construct or Python method it lacks), or the template refuses the conversation
/// (`raise_exception`, e.g. Gemma 2's "System role not supported"), a request without tools
/// falls back to llama.cpp's built-in matcher (`llama_chat_apply_template`) when that recognises
/// the template, so every conversation served before Jinja still is (the matcher folds a system
/// turn into the first user turn where a template has none). A request with tools cannot fall
/// back (the matcher knows no tools): it fails with the template's error.
pub(crate) struct Model {
    pub llama: LlamaModel,
    /// The template for llama.cpp's matcher, when the matcher recognises it.
    builtin: Option<LlamaChatTemplate>,
    /// The template as Jinja, when MiniJinja can compile and run it.
    jinja: Option<ChatTemplate>,
    /// The tool-call format when the template supports tools, or why it does not.
    pub tool_support: Result<ToolFormat, String>,
    /// Where the prompt format comes from.
    pub template_source: TemplateSource,
}

/// The name of the tool rendered to find out whether a template shows tools to the model.
const PROBE_TOOL: &str = "triage_probe_tool_5e1f";

impl Model {
    /// The model and its prompt format: `configured` (the provider's `chat_template`) when given,
    /// else the file's own template run as Jinja, else the known template of the model's family
    /// ([`crate::known`]), else the file's template through llama.cpp's built-in matcher.
    fn new(llama: LlamaModel, configured: Option<&str>) -> Result<Model, EngineError> {
        let probe = [Message::new("user", "hi")];
        let vocab = llama.vocab();
        let text = |t: LlamaToken| vocab.text(t).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        let (bos, eos) = (text(vocab.bos()), text(vocab.eos()));
        let compile = |src: &str| {
            ChatTemplate::new(src, &bos, &eos)
                .and_then(|t| t.render(&probe, None, true).map(|_| t).map_err(|e| e.to_string()))
        };
        let mut model = Model {
            llama,
            builtin: None,
            jinja: None,
            tool_support: Err(String::new()),
            template_source: TemplateSource::File,
        };
        if let Some(src) = configured {
            let t = compile(src)
                .map_err(|e| EngineError::Template(format!("the chat_template of the provider's config: {e}")))?;
            model.jinja = Some(t);
            model.template_source = TemplateSource::Configured;
            model.tool_support = model.probe_tools();
            return Ok(model);
        }
        let file = model.llama.chat_template(None);
        // Why the file's own template cannot be run as Jinja, if it cannot.
        let why = match &file {
            Err(_) => Some("the file has none".to_owned()),
            Ok(source) => match source.to_str().map_err(|e| format!("it is not UTF-8: {e}")).and_then(compile) {
                Ok(t) => {
                    model.jinja = Some(t);
                    None
                }
                Err(e) => Some(format!("MiniJinja cannot run the file's: {e}")),
            },
        };
        if let Ok(source) = file {
            model.builtin = Some(source);
            if model.render_builtin(&probe).is_err() {
                model.builtin = None;
            }
        }
        if let Some(why) = why {
            let meta = |k: &str| model.llama.meta_val_str(k).ok();
            let arch = meta("general.architecture").unwrap_or_default();
            let known = crate::known::for_model(
                &arch,
                meta("tokenizer.ggml.model").as_deref(),
                meta("general.name").as_deref(),
            );
            match (known, model.builtin.is_some()) {
                (Some(k), _) => {
                    let t = compile(k.source).map_err(|e| EngineError::Template(format!("the {} template: {e}", k.family)))?;
                    tracing::warn!(architecture = %arch, template = k.family, reason = %why, "the model file has no chat template the engine can run; using its family's known template");
                    model.jinja = Some(t);
                    model.template_source = TemplateSource::Family { family: k.family.to_owned(), why };
                }
                (None, true) => {
                    tracing::warn!(error = %why, "the chat template cannot be run as Jinja; using llama.cpp's built-in template support, without tools");
                    model.template_source = TemplateSource::FileBuiltin;
                }
                (None, false) => {
                    return Err(EngineError::Template(format!(
                        "no usable chat template: {why}, and Triage knows no template for its architecture \"{arch}\" (it knows {}); \
                         set chat_template in the provider's config (inline Jinja, or the path of a file holding it)",
                        crate::known::FAMILIES
                    )))
                }
            }
        }
        model.tool_support = model.probe_tools();
        Ok(model)
    }

    /// Whether the template shows tools to the model (rendering a probe tool puts its name in
    /// the prompt), and in which format it teaches calls.
    fn probe_tools(&self) -> Result<ToolFormat, String> {
        match &self.jinja {
            Some(jinja) => probe_tools(jinja),
            None => Err("its chat template cannot be run as Jinja".into()),
        }
    }

    fn render_builtin(&self, messages: &[Message]) -> Result<String, EngineError> {
        let Some(template) = &self.builtin else {
            return Err(EngineError::Template("llama.cpp does not recognise the model's template".into()));
        };
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        self.llama
            .apply_chat_template(template, &chat, true)
            .map_err(|e| EngineError::Template(format!("llama.cpp cannot apply the model's template: {e}")))
    }

    /// The conversation through the chat template, the assistant's turn opened; `tools` are
    /// shown to the template when not empty. See [`Model`] for Jinja and the fallback.
    pub fn render(&self, messages: &[Message], tools: &[Tool]) -> Result<String, EngineError> {
        if let Some(jinja) = &self.jinja {
            let tools = (!tools.is_empty()).then_some(tools);
            match jinja.render(messages, tools, true) {
                Ok(text) => {
                    // The tokenizer adds BOS itself: a template that writes it too would double it.
                    let bos = jinja.bos_token();
                    let strip = self.llama.vocab().should_add_bos() && !bos.is_empty();
                    return Ok(match text.strip_prefix(bos).filter(|_| strip) {
                        Some(rest) => rest.to_owned(),
                        None => text,
                    });
                }
                Err(e) if tools.is_some() || self.builtin.is_none() => {
                    return Err(EngineError::Template(e.to_string()))
                }
                Err(e) => tracing::debug!(error = %e, "Jinja failed; using llama.cpp's built-in template"),
            }
        } else if !tools.is_empty() {
            return Err(EngineError::Tools("the model's chat template cannot be run as Jinja".into()));
        }
        self.render_builtin(messages)
    }

    /// `text` as this model's tokens: BOS added if the model asks for it, special tokens in the
    /// text (`<|im_start|>`) parsed as such, as llama.cpp's server does for templated prompts.
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.llama.vocab().tokenize(text.as_bytes(), true, true)
    }
}

/// Whether `jinja` shows tools to the model (rendering a probe tool puts its name in the
/// prompt), and in which format it teaches calls.
pub(crate) fn probe_tools(jinja: &ChatTemplate) -> Result<ToolFormat, String> {
    let tool = Tool {
        name: PROBE_TOOL.into(),
        description: Some("Probe.".into()),
        parameters: serde_json::json!({"type": "object", "properties": {"x": {"type": "string"}}}),
    };
    let rendered = jinja
        .render(&[Message::new("user", "hi")], Some(&[tool]), true)
        .map_err(|e| format!("its chat template fails with tools: {e}"))?;
    if !rendered.contains(PROBE_TOOL) {
        return Err("its chat template does not show tools to the model".into());
    }
    ToolFormat::detect(jinja.source()).ok_or_else(|| {
        "its chat template shows tools, but writes calls in a format Triage does not know (it knows Hermes <tool_call>, Llama 3 JSON and Mistral [TOOL_CALLS])".into()
    })
}

/// A request's tool-call format and the tools a call is forced to (`None`: the model chooses).
pub(crate) type ToolSelection<'r> = (ToolFormat, Option<&'r [Tool]>);

/// The checks of a request's tools that need no model: `None` when it calls no tools, else the
/// model's call format and the tools a call is forced to (`None` = the model may choose).
///
/// Errors: [`EngineError::Tools`] when `tool_choice` names no given tool, `required` comes
/// without tools, or the model cannot call tools (`support` says why).
pub(crate) fn tool_selection<'r>(
    request: &'r GenerateRequest,
    support: &Result<ToolFormat, String>,
) -> Result<Option<ToolSelection<'r>>, EngineError> {
    let forced = match &request.tool_choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Auto if request.tools.is_empty() => return Ok(None),
        ToolChoice::Auto => None,
        ToolChoice::Required if request.tools.is_empty() => {
            return Err(EngineError::Tools("tool_choice \"required\" needs at least one tool".into()))
        }
        ToolChoice::Required => Some(request.tools.as_slice()),
        ToolChoice::Function(name) => match request.tools.iter().position(|t| &t.name == name) {
            Some(i) => Some(&request.tools[i..=i]),
            None => {
                return Err(EngineError::Tools(format!("tool_choice names {name:?}, which is not among the tools")))
            }
        },
    };
    let format = support.clone().map_err(|why| EngineError::Tools(format!("this model cannot call tools: {why}")))?;
    Ok(Some((format, forced)))
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
    /// [`EngineError::Template`] (no template in the file, or one that can be run neither as
    /// Jinja nor by llama.cpp's built-in matcher).
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
        // Fails here, not on the first request, when the template cannot be run.
        let model = Arc::new(Model::new(llama, config.chat_template.as_deref())?);

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
            template = %model.template_source,
            tools = model.tool_support.as_ref().map_or("no", |f| f.as_str()),
            parallel = config.parallel,
            queue = config.queue,
            context = config.context,
            "local engine loaded"
        );
        Ok(Engine { model, jobs, shared, config })
    }

    /// Admits `request` and returns its events, or refuses at once.
    ///
    /// Errors: [`EngineError::Tools`] when the request's tools cannot be served (checked before
    /// admission); [`EngineError::Busy`] when `parallel + queue` requests are already admitted;
    /// [`EngineError::Stopped`] when the engine's thread is gone. Template, context and decode
    /// errors arrive as [`Event::Failed`].
    pub fn generate(&self, mut request: GenerateRequest) -> Result<Generation, EngineError> {
        let tools = self.tool_plan(&request)?;
        if request.tool_choice == ToolChoice::None {
            request.tools.clear();
        }
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
        let (released_tx, released) = oneshot::channel();
        let permit = Permit(self.shared.clone(), released_tx);
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        match self.jobs.try_send(Job { request, events, permit, tools }) {
            Ok(()) => Ok(Generation::local(rx, released)),
            // The channel holds `capacity` jobs and at most `capacity` are admitted, so it is
            // never full here; a full one would be a bookkeeping fault, reported as busy.
            Err(TrySendError::Full(_)) => Err(EngineError::Busy { capacity }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }

    /// How `request` calls tools, or why it cannot.
    fn tool_plan(&self, request: &GenerateRequest) -> Result<Option<ToolPlan>, EngineError> {
        let Some((format, forced)) = tool_selection(request, &self.model.tool_support)? else { return Ok(None) };
        let grammar = format
            .grammar(forced.unwrap_or(&request.tools), request.parallel_tool_calls)
            .map_err(EngineError::Tools)?;
        Ok(Some(ToolPlan { format, grammar, lazy: forced.is_none() }))
    }

    /// The tool-call format of the model's template, or why it cannot call tools.
    ///
    /// Errors: a sentence saying why (no Jinja, no tools shown, unknown call format).
    pub fn tool_format(&self) -> Result<ToolFormat, String> {
        self.model.tool_support.clone()
    }

    /// Where the prompt format comes from (the file's template, the config's, or the known
    /// template of the model's family).
    pub fn template_source(&self) -> &TemplateSource {
        &self.model.template_source
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
            crashed: 0,
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
        self.model.render(messages, &[])
    }

    /// The prompt `messages` make with `tools` shown to the template (as a request with those
    /// tools and `tool_choice` other than `none` is prompted).
    ///
    /// Errors: [`EngineError::Template`]; [`EngineError::Tools`] when the template cannot be run
    /// as Jinja.
    pub fn render_with_tools(&self, messages: &[Message], tools: &[Tool]) -> Result<String, EngineError> {
        self.model.render(messages, tools)
    }

    /// The number of tokens `text` is for this model, counted as a prompt is (BOS added if the
    /// model wants one, special tokens parsed).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.model.tokenize(text).len()
    }
}
