//! `triage-tiny-gguf PATH [SEED]`: writes the tiny random-weight llama GGUF of
//! [`triage_testkit::gguf::TinyLlama`] to PATH, for the SDK client tests of the local engine.

use std::path::PathBuf;
use std::process::ExitCode;

use triage_testkit::gguf::TinyLlama;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: triage-tiny-gguf PATH [SEED]");
        return ExitCode::from(2);
    };
    let seed = match args.next().map(|s| s.to_string_lossy().parse::<u64>()) {
        None => TinyLlama::default().seed,
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("triage-tiny-gguf: SEED: {e}");
            return ExitCode::from(2);
        }
    };
    match (TinyLlama { seed, ..TinyLlama::default() }).write(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triage-tiny-gguf: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
