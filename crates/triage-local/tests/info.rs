//! Reading a GGUF file's metadata header (ggml's reader) without loading the model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use triage_local::ToolFormat;
use triage_local::{InfoError, ModelInfo};
use triage_testkit::gguf::{TinyLlama, CHATML_TEMPLATE, CHATML_TOOLS_TEMPLATE};

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("triage-info-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_header_gives_architecture_name_context_and_template() {
    let path = temp("tiny.gguf");
    let tiny = TinyLlama { seed: 7, context_length: 1536, ..TinyLlama::default() };
    tiny.write(&path).unwrap();
    let info = ModelInfo::read(&path).unwrap();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.name.as_deref(), Some("triage-tiny-llama-seed7"));
    assert_eq!(info.context_length, Some(1536));
    assert_eq!(info.chat_template.as_deref(), Some(CHATML_TEMPLATE));
    assert_eq!(info.size, std::fs::metadata(&path).unwrap().len());
    assert_eq!(info.size, tiny.to_bytes().len() as u64);
    assert_eq!(info.tool_support().unwrap_err(), "its chat template does not show tools to the model");

    let tools = temp("tools.gguf");
    TinyLlama { chat_template: CHATML_TOOLS_TEMPLATE, ..TinyLlama::default() }.write(&tools).unwrap();
    assert_eq!(ModelInfo::read(&tools).unwrap().tool_support(), Ok(ToolFormat::Hermes));
}

#[test]
fn other_files_are_refused_with_the_reason() {
    let text = temp("notes.gguf");
    std::fs::write(&text, "just some text, not a model").unwrap();
    let e = ModelInfo::read(&text).unwrap_err();
    assert!(matches!(e, InfoError::NotGguf { .. }), "{e:?}");
    assert!(e.to_string().ends_with("is not a GGUF model file: it does not start with the GGUF magic bytes"), "{e}");

    let short = temp("short.gguf");
    std::fs::write(&short, b"GG").unwrap();
    assert!(ModelInfo::read(&short).unwrap_err().to_string().ends_with("it is shorter than a GGUF header"));

    // The right magic but a header cut short: ggml's reader rejects it.
    let cut = temp("cut.gguf");
    std::fs::write(&cut, &TinyLlama::default().to_bytes()[..100]).unwrap();
    assert!(ModelInfo::read(&cut).unwrap_err().to_string().ends_with("ggml cannot parse its header"));

    let e = ModelInfo::read(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(e, InfoError::Io { .. }), "{e:?}");
}
