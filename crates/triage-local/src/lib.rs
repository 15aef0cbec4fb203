//! Triage's in-process local engine: chat completions from a GGUF model file, through llama.cpp
//! (the `llama-cpp-2` binding, which builds llama.cpp from source, CPU only).
//!
//! It exists so that the `local` tier, and sensitive work that must stay on the machine, can be
//! served without a separate server process. One [`Engine`] owns one model and one llama.cpp
//! context on a dedicated thread (never a tokio worker); that thread decodes up to `parallel`
//! sequences together, one token each per step (continuous batching, as llama.cpp's own server
//! does). In front of it is a bounded queue: at most `parallel + queue` requests are admitted, and
//! past that [`Engine::generate`] answers [`EngineError::Busy`] at once, so the gateway can send
//! work elsewhere. A request whose [`Generation`] is dropped (the client went away) is stopped at
//! its next step and frees its sequence.
//!
//! Prompts are built with the model's own chat template from its GGUF metadata
//! (`tokenizer.chat_template`), run as Jinja by MiniJinja with the variables Hugging Face
//! transformers gives it (`messages`, `tools`, `add_generation_prompt`, `bos_token`, ...); a
//! file without a template MiniJinja can run gets the known template of its family (Gemma,
//! Llama 2/3, Mistral, Qwen's ChatML, Phi-3; [`TemplateSource`]), else llama.cpp's built-in
//! matcher (`llama_chat_apply_template`) for requests without tools; a provider's
//! `chat_template` overrides them all.
//!
//! Tool calls: when rendering a probe tool puts it in the prompt, the template supports tools,
//! and the call format it teaches (Hermes `<tool_call>`, Llama 3 JSON, Mistral `[TOOL_CALLS]`)
//! is read from its text. A llama.cpp grammar built from the tools' JSON Schemas keeps calls
//! well-formed: from the first token when a call is required, from the format's opening marker
//! on when the model may choose. The call text is never streamed; it is parsed when the
//! generation ends and reported as [`Event::ToolCalls`] (malformed output stays plain text).
//!
//! Isolation: the gateway runs the engine in a supervised worker process ([`EngineProcess`]),
//! the same executable started again, so that a crash in native code ends the worker, not the
//! gateway; [`Engine`] is the engine inside that worker (and in tests and benchmarks).
#![deny(missing_docs)]

mod engine;
mod info;
mod known;
mod process;
mod template;
mod text;
mod tools;
mod worker;

pub use engine::{
    Engine, EngineConfig, EngineError, EngineStats, Event, FinishReason, GenerateRequest, Generation, Message, Output,
    Sampling, Tool, ToolCall, ToolChoice, Usage,
};
pub use info::{InfoError, ModelInfo};
pub use known::TemplateSource;
pub use process::{
    run_test_worker_if_asked, worker_main, EngineHealth, EngineProcess, EngineState, WorkerCommand, WorkerOptions,
    WORKER_SUBCOMMAND,
};
pub use tools::ToolFormat;
