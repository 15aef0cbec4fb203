//! Pure logic of the Triage LLM gateway: no sockets, no files but the config, no clocks.
//!
//! A request meets these modules in the order of DESIGN.md's request flow: [`openai`] parses and
//! validates the wire format; [`route`] resolves the `model` field against the [`catalog`] (built
//! by [`config`]) and applies hard requirements, with prompt sizes from [`tokens`]; the answer's
//! stream is framed by [`sse`] and normalised by [`stream`]; [`cost`] prices the usage.
//! [`guard`] finds personal data and secrets in a request and redacts them before it leaves the machine.
//! Everything here is unit-tested directly; the I/O lives in `triage-gateway`.
#![deny(missing_docs)]

pub mod anthropic;
pub mod breaker;
pub mod catalog;
pub mod config;
pub mod cost;
pub mod evals;
pub mod guard;
pub mod openai;
pub mod responses;
pub mod retry;
pub mod route;
pub mod router;
pub mod sse;
pub mod stream;
pub mod tokens;
pub mod translate;
