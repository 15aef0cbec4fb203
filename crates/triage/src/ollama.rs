//! Models already on disk in an Ollama store, so `triage models` can point at GGUF files a
//! `kind = "local"` provider can run without downloading them again.
//!
//! Ollama keeps one JSON manifest per model and tag under
//! `manifests/{registry}/{namespace}/{name}/{tag}` (e.g. `registry.ollama.ai/library/qwen2.5/1.5b`)
//! and the files by digest under `blobs/sha256-{hex}`; the manifest's layer with media type
//! `application/vnd.ollama.image.model` is the GGUF weights.

use std::path::{Path, PathBuf};

/// The manifest layer holding the model weights (a GGUF file).
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// One model found in an Ollama store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaModel {
    /// The name Ollama shows: `name:tag` for the default library, else `registry/namespace/name:tag`
    /// (`namespace/name:tag` on `registry.ollama.ai`).
    pub name: String,
    /// The weights file (`blobs/sha256-{hex}`), usable as a local provider's `model_path`.
    pub model_path: PathBuf,
    /// The weights file's size in bytes, or `None` when the blob is missing.
    pub size: Option<u64>,
}

/// `$OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn default_root() -> PathBuf {
    if let Some(d) = std::env::var_os("OLLAMA_MODELS") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".ollama").join("models")
}

fn dirs(p: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    out.sort();
    out
}

/// The model blob's digest hex from a manifest's JSON text, if it names one.
fn model_digest(manifest: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(manifest).ok()?;
    let layer = v["layers"].as_array()?.iter().find(|l| l["mediaType"] == MODEL_LAYER)?;
    let hex = layer["digest"].as_str()?.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_owned())
}

/// Lists the models of the Ollama store at `root`, sorted by name. A missing store gives an
/// empty list; manifests that cannot be read or name no model layer are skipped.
pub fn discover(root: &Path) -> Vec<OllamaModel> {
    let mut found = Vec::new();
    for (registry, rdir) in dirs(&root.join("manifests")) {
        for (namespace, ndir) in dirs(&rdir) {
            for (name, mdir) in dirs(&ndir) {
                for (tag, file) in dirs(&mdir) {
                    let Ok(text) = std::fs::read_to_string(&file) else { continue };
                    let Some(hex) = model_digest(&text) else { continue };
                    let model_path = root.join("blobs").join(format!("sha256-{hex}"));
                    let size = std::fs::metadata(&model_path).ok().filter(|m| m.is_file()).map(|m| m.len());
                    let name = match (registry.as_str(), namespace.as_str()) {
                        ("registry.ollama.ai", "library") => format!("{name}:{tag}"),
                        ("registry.ollama.ai", ns) => format!("{ns}/{name}:{tag}"),
                        (reg, ns) => format!("{reg}/{ns}/{name}:{tag}"),
                    };
                    found.push(OllamaModel { name, model_path, size });
                }
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// `1.5 GB`-style size (powers of 1,000).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Writes a manifest for `registry/namespace/name/tag` whose model layer is `blob`, and the
    /// blob itself with `len` bytes when `len` is given.
    fn fake_model(root: &Path, path: &str, hex: &str, len: Option<usize>) {
        let m = root.join("manifests").join(path);
        std::fs::create_dir_all(m.parent().unwrap()).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 10},
            "layers": [
                {"mediaType": "application/vnd.ollama.image.template", "digest": format!("sha256:{}", "d".repeat(64)), "size": 5},
                {"mediaType": MODEL_LAYER, "digest": format!("sha256:{hex}"), "size": len.unwrap_or(0)},
            ]
        });
        std::fs::write(&m, manifest.to_string()).unwrap();
        if let Some(len) = len {
            std::fs::create_dir_all(root.join("blobs")).unwrap();
            std::fs::write(root.join("blobs").join(format!("sha256-{hex}")), vec![7u8; len]).unwrap();
        }
    }

    #[test]
    fn lists_the_models_of_a_store() {
        let root = std::env::temp_dir().join(format!("triage-ollama-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "e".repeat(64));
        fake_model(&root, "registry.ollama.ai/library/qwen2.5/1.5b", &a, Some(1234));
        fake_model(&root, "registry.ollama.ai/alice/tiny/latest", &b, None);
        fake_model(&root, "hf.co/bartowski/Some-GGUF/Q4_K_M", &c, Some(10));
        // Not a model: unreadable JSON, and a manifest without a model layer.
        std::fs::write(root.join("manifests/registry.ollama.ai/library/qwen2.5/broken"), "{").unwrap();
        std::fs::write(root.join("manifests/registry.ollama.ai/library/qwen2.5/nolayer"), r#"{"layers":[]}"#).unwrap();

        let found = discover(&root);
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["alice/tiny:latest", "hf.co/bartowski/Some-GGUF:Q4_K_M", "qwen2.5:1.5b"]);
        assert_eq!(found[2].model_path, root.join(format!("blobs/sha256-{a}")));
        assert_eq!(found[2].size, Some(1234));
        assert_eq!(found[0].size, None);
        assert!(discover(&root.join("nowhere")).is_empty());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(986_100_000), "986.1 MB");
        assert_eq!(human_size(1_500_000_000), "1.5 GB");
    }
}
