//! Model files on this machine that a `kind = "local"` provider can run, and the one the
//! built-in catalog serves when there is no configuration file.
//!
//! Three places are looked at, in this order of preference: the registry that `triage models add`
//! writes (`$XDG_CONFIG_HOME/triage/models.toml`, else `~/.config/triage/models.toml`; the most
//! recently added first), the files `triage pull` downloaded (see [`crate::pull::models_root`]),
//! and Ollama's store (see [`crate::ollama::default_root`]). The registry holds paths, never
//! copies: the files stay where they are.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use triage_core::config::FoundLocalModel;
use triage_local::ModelInfo;

use crate::{ollama, pull};

/// The context the built-in catalog gives a found model, in tokens per sequence, unless the
/// model was trained for less: 4,096 tokens × 2 sequences keeps the KV cache of a 1–3 B model in
/// a few hundred MiB.
pub const DEFAULT_CONTEXT: u32 = 4096;

/// A model registered with `triage models add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// The name `triage models` shows and the catalog id it gets.
    pub name: String,
    /// The GGUF file (absolute).
    pub path: PathBuf,
    /// Its size in bytes when it was added.
    pub size: u64,
    /// `general.architecture`.
    pub architecture: String,
    /// The context it was trained for, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// When it was added, in seconds since the Unix epoch.
    pub added: u64,
}

/// The registry file's contents.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Registered models, oldest first.
    #[serde(default)]
    pub models: Vec<Registered>,
}

/// `$XDG_CONFIG_HOME/triage/models.toml`, else `~/.config/triage/models.toml`.
pub fn registry_path() -> PathBuf {
    crate::paths::xdg("XDG_CONFIG_HOME", ".config").join("triage").join("models.toml")
}

const HEADER: &str = "# Model files registered with `triage models add` (paths only: the files stay where they are).\n\
# `triage models remove NAME` forgets one. The built-in catalog of `triage serve` runs the last one added.\n\n";

impl Registry {
    /// Reads the registry at `path`; a missing file is an empty registry.
    ///
    /// Errors: the file cannot be read or is not a registry (the message names the file).
    pub fn load(path: &Path) -> Result<Registry, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: not a model registry: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the registry to `path` (a temporary file renamed into place, so a reader never
    /// sees half of it), creating its folder.
    ///
    /// Errors: the folder or file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| format!("cannot encode the registry: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension(format!("toml.{}.tmp", std::process::id()));
        std::fs::write(&tmp, format!("{HEADER}{text}")).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Registers the GGUF at `file` as `name` (default: the file's `general.name`, else its file
    /// name without `.gguf`). Adding a file already registered refreshes its entry (and renames
    /// it when `name` is given).
    ///
    /// Errors: the file is missing or not a GGUF model (its header is read and checked), it has
    /// no chat template the engine can run and Triage knows none for its architecture
    /// ([`ModelInfo::template`]; the message says how to serve it anyway), or `name` is taken by
    /// another file.
    pub fn add(&mut self, file: &Path, name: Option<&str>) -> Result<Registered, String> {
        let path = std::fs::canonicalize(file).map_err(|e| format!("cannot register {}: {e}", file.display()))?;
        let info = ModelInfo::read(&path).map_err(|e| e.to_string())?;
        if let Err(why) = info.template() {
            return Err(format!(
                "{} is not registered, the engine cannot serve it as it is: {why} (a provider of kind = \"local\" \
                 in triage.toml, with this file as model_path)",
                path.display()
            ));
        }
        let name = match name.map(str::trim) {
            Some("") => return Err("the name must not be empty".into()),
            Some(n) => n.to_owned(),
            None => default_name(&info),
        };
        if let Some(other) = self.models.iter().find(|m| m.name == name && m.path != path) {
            return Err(format!(
                "\"{name}\" is already registered for {}; pass --name to register this file under another name, \
                 or `triage models remove {name}` first",
                other.path.display()
            ));
        }
        self.models.retain(|m| m.path != path);
        let added = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let entry = Registered {
            name,
            path,
            size: info.size,
            architecture: info.architecture,
            context_length: info.context_length,
            added,
        };
        self.models.push(entry.clone());
        Ok(entry)
    }

    /// Forgets the model named `name` (the file is not touched).
    ///
    /// Errors: no model has that name (the message lists the registered names).
    pub fn remove(&mut self, name: &str) -> Result<Registered, String> {
        match self.models.iter().position(|m| m.name == name) {
            Some(i) => Ok(self.models.remove(i)),
            None => {
                let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                Err(if names.is_empty() {
                    format!("no model is registered as \"{name}\" (none is registered)")
                } else {
                    format!("no model is registered as \"{name}\" (registered: {})", names.join(", "))
                })
            }
        }
    }
}

/// `general.name`, else the file name without its `.gguf` extension.
fn default_name(info: &ModelInfo) -> String {
    info.name.clone().unwrap_or_else(|| {
        info.path.file_stem().map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned())
    })
}

/// Where a model file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `triage models add`.
    Registered,
    /// `triage pull`.
    Pulled,
    /// Ollama's store.
    Ollama,
}

impl Source {
    /// A short label: `registered`, `pulled`, `ollama`.
    pub fn label(self) -> &'static str {
        match self {
            Source::Registered => "registered",
            Source::Pulled => "pulled",
            Source::Ollama => "ollama",
        }
    }

    fn described(self) -> &'static str {
        match self {
            Source::Registered => "registered with `triage models add`",
            Source::Pulled => "downloaded by `triage pull`",
            Source::Ollama => "in Ollama's store",
        }
    }
}

/// One model file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// Its name: the registered name, `{repo}/{file}` when pulled, `name:tag` in Ollama.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes; `None` when the file is missing.
    pub size: Option<u64>,
    /// Where it was found.
    pub source: Source,
}

/// Every model file found, most preferred first: registered (newest first), pulled, Ollama's.
/// A file found in more than one place is listed once, under the first.
///
/// Errors: the registry exists but cannot be read.
pub fn find_all(registry: &Path, pulled_root: &Path, ollama_root: &Path) -> Result<Vec<OnDisk>, String> {
    let reg = Registry::load(registry)?;
    let mut out: Vec<OnDisk> = reg
        .models
        .iter()
        .rev()
        .map(|m| OnDisk {
            name: m.name.clone(),
            path: m.path.clone(),
            size: std::fs::metadata(&m.path).ok().map(|md| md.len()),
            source: Source::Registered,
        })
        .collect();
    out.extend(pull::list_pulled(pulled_root).into_iter().map(|p| OnDisk {
        name: p.name,
        path: p.path,
        size: Some(p.size),
        source: Source::Pulled,
    }));
    out.extend(ollama::discover(ollama_root).into_iter().map(|m| OnDisk {
        name: m.name,
        path: m.model_path,
        size: m.size,
        source: Source::Ollama,
    }));
    let mut seen = std::collections::HashSet::new();
    out.retain(|m| seen.insert(std::fs::canonicalize(&m.path).unwrap_or_else(|_| m.path.clone())));
    Ok(out)
}

/// The first of `found` whose file reads as a GGUF model, as the built-in catalog serves it:
/// context [`DEFAULT_CONTEXT`] or the trained context if smaller; the `tools` capability when the
/// engine can run tool calls with its chat template ([`ModelInfo::tool_support`]). Files that
/// cannot be read are skipped with a warning.
pub fn pick(found: &[OnDisk]) -> Option<FoundLocalModel> {
    found.iter().filter(|m| m.size.is_some()).find_map(|m| match ModelInfo::read(&m.path) {
        Ok(info) => Some(FoundLocalModel {
            id: short_name(&m.name, m.source),
            model_path: m.path.clone(),
            context: info.context_length.filter(|&c| c > 0).map_or(DEFAULT_CONTEXT, |c| c.min(DEFAULT_CONTEXT)),
            tools: info.tool_support().is_ok(),
            found_in: format!("{}: {}", m.source.described(), m.name),
        }),
        Err(e) => {
            tracing::warn!(model = %m.name, error = %e, "skipping a model file found on disk");
            None
        }
    })
}

/// The catalog id of a found model: a pulled `{repo}/{file}` gives the file name without
/// `.gguf`; other names are kept (the catalog reduces them to id characters).
fn short_name(name: &str, source: Source) -> String {
    match source {
        Source::Pulled => {
            let file = name.rsplit('/').next().unwrap_or(name);
            file.strip_suffix(".gguf").unwrap_or(file).to_owned()
        }
        Source::Registered | Source::Ollama => name.to_owned(),
    }
}

/// [`pick`] over [`find_all`] in the default places; `None` when nothing usable is found or the
/// registry cannot be read (logged).
pub fn find_default() -> Option<FoundLocalModel> {
    match find_all(&registry_path(), &pull::models_root(), &ollama::default_root()) {
        Ok(found) => pick(&found),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the model registry");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use triage_testkit::gguf::TinyLlama;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("triage-local-models-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn add_reads_the_header_names_the_model_and_survives_a_round_trip() {
        let d = dir("add");
        let file = d.join("tiny.gguf");
        TinyLlama { seed: 3, context_length: 1024, ..TinyLlama::default() }.write(&file).unwrap();
        let reg_path = d.join("config").join("models.toml");
        let mut reg = Registry::load(&reg_path).unwrap();
        assert!(reg.models.is_empty());
        let e = reg.add(&file, None).unwrap();
        assert_eq!(e.name, "triage-tiny-llama-seed3");
        assert_eq!(e.architecture, "llama");
        assert_eq!(e.context_length, Some(1024));
        assert_eq!(e.size, std::fs::metadata(&file).unwrap().len());
        assert!(e.path.is_absolute());
        reg.save(&reg_path).unwrap();
        assert_eq!(Registry::load(&reg_path).unwrap(), reg);

        // The same file again: refreshed and renamed, not duplicated.
        let e2 = reg.add(&file, Some("tiny")).unwrap();
        assert_eq!((reg.models.len(), e2.name.as_str()), (1, "tiny"));
        // Another file may not take the name.
        let other = d.join("other.gguf");
        TinyLlama::default().write(&other).unwrap();
        let err = reg.add(&other, Some("tiny")).unwrap_err();
        assert!(err.starts_with("\"tiny\" is already registered for"), "{err}");
        assert_eq!(reg.add(&other, None).unwrap().name, "triage-tiny-llama-seed42");

        // Not a model: refused, the registry unchanged.
        let text = d.join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        assert!(reg.add(&text, None).unwrap_err().contains("is not a GGUF model file"));
        assert_eq!(reg.models.len(), 2);

        assert_eq!(reg.remove("tiny").unwrap().path, e.path);
        let err = reg.remove("tiny").unwrap_err();
        assert_eq!(err, "no model is registered as \"tiny\" (registered: triage-tiny-llama-seed42)");

        std::fs::write(&reg_path, "models = 3").unwrap();
        assert!(Registry::load(&reg_path).unwrap_err().contains("not a model registry"));
    }

    #[test]
    fn registered_models_come_first_newest_first_and_unreadable_files_are_skipped() {
        let d = dir("find");
        let reg_path = d.join("models.toml");
        let a = d.join("a.gguf");
        let b = d.join("b.gguf");
        TinyLlama { seed: 1, context_length: 8192, ..TinyLlama::default() }.write(&a).unwrap();
        TinyLlama { seed: 2, context_length: 1024, ..TinyLlama::default() }.write(&b).unwrap();
        let mut reg = Registry::default();
        reg.add(&a, Some("model-a")).unwrap();
        reg.add(&b, Some("Model B")).unwrap();
        reg.save(&reg_path).unwrap();
        // A pulled file (the cache layout) that is not a model.
        let pulled = d.join("cache");
        let repo = pulled.join("org--repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("broken.gguf"), "not a model").unwrap();
        let found = find_all(&reg_path, &pulled, &d.join("no-ollama")).unwrap();
        let names: Vec<(&str, Source)> = found.iter().map(|m| (m.name.as_str(), m.source)).collect();
        assert_eq!(
            names,
            [
                ("Model B", Source::Registered),
                ("model-a", Source::Registered),
                ("org/repo/broken.gguf", Source::Pulled)
            ]
        );
        let picked = pick(&found).unwrap();
        assert_eq!(picked.id, "Model B");
        assert_eq!(picked.context, 1024, "trained for less than the default");
        assert!(!picked.tools, "ChatML without tools");
        assert_eq!(picked.found_in, "registered with `triage models add`: Model B");

        // Only the broken pulled file: nothing usable.
        assert_eq!(pick(&found[2..]), None);
        // Only a: its trained 8,192 tokens are capped.
        assert_eq!(pick(&found[1..]).unwrap().context, DEFAULT_CONTEXT);
        assert_eq!(short_name("org/repo/q4.gguf", Source::Pulled), "q4");

        // A template that shows tools and teaches a known call format: the tools capability.
        let t = d.join("t.gguf");
        let tools = triage_testkit::gguf::CHATML_TOOLS_TEMPLATE;
        TinyLlama { chat_template: tools, ..TinyLlama::default() }.write(&t).unwrap();
        let on_disk = OnDisk { name: "t".into(), path: t, size: Some(1), source: Source::Registered };
        assert!(pick(&[on_disk]).unwrap().tools);
    }
}
