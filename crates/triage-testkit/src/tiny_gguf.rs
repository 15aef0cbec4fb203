//! `triage-tiny-gguf PATH [--tools]`: writes the tiny random-weight test model
//! ([`triage_testkit::gguf::TinyLlama`]) to PATH, with the ChatML + tools template when `--tools`
//! is given, for tests outside Rust (the Python SDK tests of the local engine).

use std::path::PathBuf;
use std::process::ExitCode;

use triage_testkit::gguf::{TinyLlama, CHATML_TOOLS_TEMPLATE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tools = args.iter().any(|a| a == "--tools");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [path] = paths.as_slice() else {
        eprintln!("usage: triage-tiny-gguf PATH [--tools]");
        return ExitCode::from(2);
    };
    let mut model = TinyLlama::default();
    if tools {
        model.chat_template = CHATML_TOOLS_TEMPLATE;
    }
    match model.write(&PathBuf::from(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
