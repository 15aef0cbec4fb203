//! Fake upstream LLM APIs for Triage's tests and benchmarks. Tests never reach the internet:
//! [`scripted`] replays exact bytes (for wire-format edge cases and faults), [`fixed`] answers
//! fast in the real wire format (for load tests and SDK client tests).
#![allow(clippy::panic)]

pub mod fixed;
pub mod gguf;
pub mod scripted;

pub use scripted::{FakeUpstream, Recorded, Reply, Step};
