//! What a GGUF file says about itself, read from its metadata header alone (no weights are
//! loaded), by ggml's own GGUF reader: enough to register a model file, name it in a catalog and
//! size its context before the engine loads it.
//!
//! Keys are those of the GGUF specification (ggml's `docs/gguf.md`): `general.architecture`,
//! `general.name`, `{architecture}.context_length`, `tokenizer.chat_template`. Values are type
//! checked before they are read (`gguf_type`: 4 = uint32, 5 = int32, 8 = string, 10 = uint64, as
//! the specification numbers them), so a file of the wrong shape is reported, never read as
//! something else.

use std::io::Read;
use std::path::{Path, PathBuf};

use llama_cpp_2::gguf::GgufContext;

/// The first four bytes of every GGUF file.
const MAGIC: &[u8; 4] = b"GGUF";

const TYPE_UINT32: u32 = 4;
const TYPE_INT32: u32 = 5;
const TYPE_STRING: u32 = 8;
const TYPE_UINT64: u32 = 10;

/// Why a file's metadata cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic, or ggml cannot parse its header.
    #[error("{path} is not a GGUF model file: {reason}")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The metadata of one GGUF model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// `general.architecture`, e.g. `llama`, `qwen2`, `gemma3`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// `{architecture}.context_length`: the context the model was trained for, in tokens.
    pub context_length: Option<u32>,
    /// `tokenizer.chat_template`: the Jinja chat template, when the file carries one.
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.model`: `gpt2` (BPE), `llama` (SentencePiece), ...
    pub tokenizer_model: Option<String>,
}

impl ModelInfo {
    /// Whether the model can call tools as the engine would run it: its chat template runs as
    /// Jinja, shows a probe tool to the model, and teaches a call format the engine knows (the
    /// same check [`crate::Engine`] makes at load, here without loading the model; `bos_token`
    /// and `eos_token` are empty in this render).
    ///
    /// Errors: why not, in words (no template, the template fails, no tools shown, an unknown
    /// call format).
    pub fn tool_support(&self) -> Result<crate::ToolFormat, String> {
        let source = self.chat_template.as_deref().ok_or("the file has no chat template")?;
        let template = crate::template::ChatTemplate::new(source, "", "")?;
        crate::engine::probe_tools(&template)
    }

    /// The chat template the engine will prompt this model with (as [`crate::Engine::load`]
    /// chooses it without a configured `chat_template`): the file's own when MiniJinja runs it,
    /// else the known template of the model's family, else the file's through llama.cpp's
    /// built-in matcher (which the engine checks when it loads the model).
    ///
    /// Errors: the file has no template that can be run and Triage knows none for its
    /// architecture: why, and the fix (`chat_template` in the provider's config).
    pub fn template(&self) -> Result<crate::TemplateSource, String> {
        let why = match self.chat_template.as_deref() {
            None => "the file has none".to_owned(),
            Some(source) => {
                let probe = [crate::Message::new("user", "hi")];
                match crate::template::ChatTemplate::new(source, "", "")
                    .and_then(|t| t.render(&probe, None, true).map_err(|e| e.to_string()))
                {
                    Ok(_) => return Ok(crate::TemplateSource::File),
                    Err(e) => format!("MiniJinja cannot run the file's: {e}"),
                }
            }
        };
        match crate::known::for_model(&self.architecture, self.tokenizer_model.as_deref(), self.name.as_deref()) {
            Some(k) => Ok(crate::TemplateSource::Family { family: k.family.to_owned(), why }),
            None if self.chat_template.is_some() => Ok(crate::TemplateSource::FileBuiltin),
            None => Err(format!(
                "no usable chat template: {why}, and Triage knows no template for its architecture \"{}\" (it knows {}); \
                 set chat_template in the provider's config (inline Jinja, or the path of a file holding it)",
                self.architecture,
                crate::known::FAMILIES
            )),
        }
    }

    /// Reads `path`'s GGUF header.
    ///
    /// Errors: [`InfoError::Io`] when the file cannot be read; [`InfoError::NotGguf`] when it is
    /// not a GGUF file (wrong magic, a header ggml rejects, no `general.architecture`).
    pub fn read(path: &Path) -> Result<ModelInfo, InfoError> {
        let io = |source| InfoError::Io { path: path.to_owned(), source };
        let not_gguf = |reason: &str| InfoError::NotGguf { path: path.to_owned(), reason: reason.to_owned() };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; 4];
        match file.read_exact(&mut magic) {
            Ok(()) if &magic == MAGIC => {}
            Ok(()) => return Err(not_gguf("it does not start with the GGUF magic bytes")),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(not_gguf("it is shorter than a GGUF header"))
            }
            Err(e) => return Err(io(e)),
        }
        drop(file);
        // ggml logs why it rejects a header through llama.cpp's log, which goes to tracing.
        crate::engine::backend().ok();
        let gguf = GgufContext::from_file(path).ok_or_else(|| not_gguf("ggml cannot parse its header"))?;
        let string = |key: &str| {
            let i = gguf.find_key(key);
            (i >= 0 && gguf.kv_type(i) == TYPE_STRING).then(|| gguf.val_str(i).map(str::to_owned)).flatten()
        };
        let architecture =
            string("general.architecture").ok_or_else(|| not_gguf("it names no general.architecture"))?;
        let context_length = {
            let i = gguf.find_key(&format!("{architecture}.context_length"));
            if i < 0 {
                None
            } else {
                match gguf.kv_type(i) {
                    TYPE_UINT32 => Some(gguf.val_u32(i)),
                    TYPE_INT32 => u32::try_from(gguf.val_i32(i)).ok(),
                    TYPE_UINT64 => u32::try_from(gguf.val_u64(i)).ok(),
                    _ => None,
                }
            }
        };
        Ok(ModelInfo {
            path: path.to_owned(),
            size,
            name: string("general.name").filter(|n| !n.trim().is_empty()),
            chat_template: string("tokenizer.chat_template"),
            tokenizer_model: string("tokenizer.ggml.model"),
            architecture,
            context_length,
        })
    }
}
