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
//! (`tokenizer.chat_template`), applied by llama.cpp's built-in template support
//! (`llama_chat_apply_template`, which recognises the common templates: ChatML, Llama 2/3,
//! Mistral, Gemma, Phi and others, but runs no arbitrary Jinja).
#![deny(missing_docs)]

mod engine;
mod info;
mod text;
mod worker;

pub use engine::{
    Engine, EngineConfig, EngineError, EngineStats, Event, FinishReason, GenerateRequest, Generation, Message, Output,
    Sampling, Usage,
};
pub use info::{InfoError, ModelInfo};
