//! A tiny llama-architecture GGUF with random weights, for tests of the local engine.
//!
//! No real weights can be downloaded where Triage is tested, so the tests write their own model:
//! 2 layers, 64-wide embeddings, 4 heads, a 128-wide feed-forward and a 360-token SentencePiece
//! ("llama") vocabulary with byte fallback, so any text tokenizes. Its chat template is ChatML,
//! which llama.cpp recognises, or ([`TinyLlama::chat_template`]) ChatML with tools. The weights come from a seeded generator: the same seed writes the
//! same file, byte for byte, and the same model answers the same prompt the same way.
//!
//! The file format is GGUF version 3 as specified in ggml's `docs/gguf.md`: magic `GGUF`, version,
//! tensor count, metadata count, metadata key/values, tensor infos, padding to
//! `general.alignment` (32), then the tensor data (F32 here), each tensor aligned.

use std::io::{self, Write};
use std::path::Path;

/// The ChatML template (as Qwen and others ship it); llama.cpp detects it by `<|im_start|>`.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// ChatML with tools, written for these tests in the Hermes style (tools listed as JSON in the
/// system turn, calls written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, tool
/// results in a `tool` turn inside `<tool_response>`). llama.cpp's built-in matcher takes it
/// for ChatML; run as Jinja it shows tools to the model.
pub const CHATML_TOOLS_TEMPLATE: &str = r#"{%- if tools %}
{{- '<|im_start|>system
' }}
{%- if messages[0].role == 'system' %}
{{- messages[0].content + '

' }}
{%- endif %}
{{- 'Functions you may call, one JSON object each:
' }}
{%- for tool in tools %}
{{- tool | tojson + '
' }}
{%- endfor %}
{{- 'To call one, answer with <tool_call>{"name": <name>, "arguments": <arguments>}</tool_call>.<|im_end|>
' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system
' + messages[0].content + '<|im_end|>
' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '<|im_start|>assistant
' + message.content }}
{%- for call in message.tool_calls %}
{{- '<tool_call>
{"name": "' + call.function.name + '", "arguments": ' + call.function.arguments | tojson + '}
</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>
' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>tool
<tool_response>
' + message.content + '
</tool_response><|im_end|>
' }}
{%- else %}
{{- '<|im_start|>' + message.role + '
' + message.content + '<|im_end|>
' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant
' }}
{%- endif %}"#;

/// Shape of the tiny model.
#[derive(Debug, Clone, Copy)]
pub struct TinyLlama {
    /// Seed of the weights.
    pub seed: u64,
    /// Transformer blocks.
    pub layers: u32,
    /// Embedding width.
    pub embd: u32,
    /// Attention heads (the key/value heads are as many).
    pub heads: u32,
    /// Feed-forward width.
    pub ff: u32,
    /// Training context length written to the metadata, in tokens.
    pub context_length: u32,
    /// `tokenizer.chat_template`: [`CHATML_TEMPLATE`] by default, [`CHATML_TOOLS_TEMPLATE`] for
    /// tool calling.
    pub chat_template: &'static str,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            seed: 42,
            layers: 2,
            embd: 64,
            heads: 4,
            ff: 128,
            context_length: 2048,
            chat_template: CHATML_TEMPLATE,
        }
    }
}

// Token types of llama.cpp's `llama_token_type`.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;

/// The id of `<|im_end|>` (ChatML's end of turn) in the tiny vocabulary.
pub const IM_END: u32 = 4;

/// The vocabulary: `(text, score, type)`. Special tokens, the 256 byte tokens, the printable
/// ASCII characters (a space is `▁`), then a few merges, the longer ones scored higher.
fn vocab() -> Vec<(String, f32, i32)> {
    let mut v: Vec<(String, f32, i32)> = vec![
        ("<unk>".into(), 0.0, UNKNOWN),
        ("<s>".into(), 0.0, CONTROL),
        ("</s>".into(), 0.0, CONTROL),
        ("<|im_start|>".into(), 0.0, CONTROL),
        ("<|im_end|>".into(), 0.0, CONTROL),
    ];
    for b in 0..=255u8 {
        v.push((format!("<0x{b:02X}>"), 0.0, BYTE));
    }
    v.push(("\u{2581}".into(), -1.0, NORMAL));
    for c in (b'!'..=b'~').map(char::from) {
        v.push((c.to_string(), -2.0, NORMAL));
    }
    let merges = [
        "\u{2581}t",
        "he",
        "\u{2581}the",
        "in",
        "er",
        "an",
        "re",
        "on",
        "\u{2581}a",
        "en",
        "at",
        "ou",
        "ed",
        "is",
        "it",
        "or",
        "es",
        "\u{2581}s",
        "ing",
        "\u{2581}w",
        "\u{2581}h",
        "ll",
        "\u{2581}c",
        "us",
        "use",
        "user",
        "sy",
        "sys",
        "system",
        "as",
        "ass",
        "assist",
        "assistant",
        "\u{2581}H",
        "\u{2581}He",
        "\u{2581}Hel",
        "\u{2581}Hell",
        "\u{2581}Hello",
    ];
    for (i, m) in merges.iter().enumerate() {
        v.push(((*m).to_owned(), -3.0 + i as f32 * 0.01 + m.chars().count() as f32, NORMAL));
    }
    v
}

/// Size of the tiny vocabulary.
pub fn vocab_size() -> usize {
    vocab().len()
}

/// A seeded splitmix64 stream of uniform floats in [-1, 1): stable across platforms and
/// versions, unlike a library generator's.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

struct Tensor {
    name: String,
    /// ggml order: `dims[0]` varies fastest.
    dims: Vec<u64>,
    data: Vec<f32>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

// GGUF metadata value types.
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

fn put_value(out: &mut Vec<u8>, v: &Value) {
    let put_u32 = |out: &mut Vec<u8>, x: u32| out.extend_from_slice(&x.to_le_bytes());
    match v {
        Value::U32(x) => {
            put_u32(out, T_U32);
            put_u32(out, *x);
        }
        Value::F32(x) => {
            put_u32(out, T_F32);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::Bool(x) => {
            put_u32(out, T_BOOL);
            out.push(u8::from(*x));
        }
        Value::Str(s) => {
            put_u32(out, T_STRING);
            put_str(out, s);
        }
        Value::Strs(xs) => {
            put_u32(out, T_ARRAY);
            put_u32(out, T_STRING);
            out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
            for s in xs {
                put_str(out, s);
            }
        }
        Value::F32s(xs) => {
            put_u32(out, T_ARRAY);
            put_u32(out, T_F32);
            out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
            for x in xs {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        Value::I32s(xs) => {
            put_u32(out, T_ARRAY);
            put_u32(out, T_I32);
            out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
            for x in xs {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

const ALIGNMENT: usize = 32;

fn pad(out: &mut Vec<u8>) {
    while out.len() % ALIGNMENT != 0 {
        out.push(0);
    }
}

impl TinyLlama {
    /// The whole GGUF file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let vocab = vocab();
        let n_vocab = vocab.len() as u64;
        let (embd, ff) = (u64::from(self.embd), u64::from(self.ff));
        let kv: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::Str("llama".into())),
            ("general.name", Value::Str(format!("triage-tiny-llama-seed{}", self.seed))),
            ("general.alignment", Value::U32(ALIGNMENT as u32)),
            ("llama.context_length", Value::U32(self.context_length)),
            ("llama.embedding_length", Value::U32(self.embd)),
            ("llama.block_count", Value::U32(self.layers)),
            ("llama.feed_forward_length", Value::U32(self.ff)),
            ("llama.attention.head_count", Value::U32(self.heads)),
            ("llama.attention.head_count_kv", Value::U32(self.heads)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("llama.rope.dimension_count", Value::U32(self.embd / self.heads)),
            ("llama.rope.freq_base", Value::F32(10000.0)),
            ("tokenizer.ggml.model", Value::Str("llama".into())),
            ("tokenizer.ggml.tokens", Value::Strs(vocab.iter().map(|t| t.0.clone()).collect())),
            ("tokenizer.ggml.scores", Value::F32s(vocab.iter().map(|t| t.1).collect())),
            ("tokenizer.ggml.token_type", Value::I32s(vocab.iter().map(|t| t.2).collect())),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(IM_END)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(false)),
            ("tokenizer.chat_template", Value::Str(self.chat_template.into())),
        ];

        let mut rng = Rng(self.seed);
        let mut random = |dims: Vec<u64>, scale: f32| {
            let n = dims.iter().product::<u64>() as usize;
            let data = (0..n).map(|_| rng.next_f32() * scale).collect();
            (dims, data)
        };
        let ones = |n: u64| (vec![n], vec![1.0f32; n as usize]);
        let mut tensors = Vec::new();
        let mut push = |name: String, (dims, data): (Vec<u64>, Vec<f32>)| tensors.push(Tensor { name, dims, data });
        push("token_embd.weight".into(), random(vec![embd, n_vocab], 1.0));
        for i in 0..self.layers {
            let w = 1.0 / (embd as f32).sqrt() * 1.7;
            push(format!("blk.{i}.attn_norm.weight"), ones(embd));
            push(format!("blk.{i}.attn_q.weight"), random(vec![embd, embd], w));
            push(format!("blk.{i}.attn_k.weight"), random(vec![embd, embd], w));
            push(format!("blk.{i}.attn_v.weight"), random(vec![embd, embd], w));
            push(format!("blk.{i}.attn_output.weight"), random(vec![embd, embd], w));
            push(format!("blk.{i}.ffn_norm.weight"), ones(embd));
            push(format!("blk.{i}.ffn_gate.weight"), random(vec![embd, ff], w));
            push(format!("blk.{i}.ffn_up.weight"), random(vec![embd, ff], w));
            push(format!("blk.{i}.ffn_down.weight"), random(vec![ff, embd], 1.0 / (ff as f32).sqrt() * 1.7));
        }
        push("output_norm.weight".into(), ones(embd));
        push("output.weight".into(), random(vec![embd, n_vocab], 1.0 / (embd as f32).sqrt() * 3.0));

        let mut out = Vec::with_capacity(1 << 20);
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in &kv {
            put_str(&mut out, k);
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for t in &tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&0u32.to_le_bytes()); // GGML_TYPE_F32
            out.extend_from_slice(&offset.to_le_bytes());
            let bytes = (t.data.len() * 4) as u64;
            offset += bytes.div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64;
        }
        pad(&mut out);
        for t in &tensors {
            for x in &t.data {
                out.extend_from_slice(&x.to_le_bytes());
            }
            pad(&mut out);
        }
        out
    }

    /// Writes the model to `path`.
    ///
    /// Errors: the file cannot be written.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        f.write_all(&self.to_bytes())?;
        f.sync_all()
    }

    /// Writes the model into the temporary directory, under a name made from its content's
    /// hash, and returns the path. A file already there with that name and size is the same
    /// model and is reused, so test runs leave no copies behind; concurrent writers each write
    /// their own file and rename it into place.
    ///
    /// Errors: the file cannot be written.
    pub fn write_temp(&self) -> io::Result<std::path::PathBuf> {
        let bytes = self.to_bytes();
        // FNV-1a, 64 bits: enough to tell fixture versions apart.
        let hash =
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let dir = std::env::temp_dir();
        let path = dir.join(format!("triage-tiny-llama-{hash:016x}.gguf"));
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(path);
        }
        static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let partial = dir.join(format!("triage-tiny-llama-{hash:016x}.{}-{n}.partial", std::process::id()));
        let mut f = std::fs::File::create(&partial)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&partial, &path)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_the_header_is_gguf_v3() {
        let a = TinyLlama::default().to_bytes();
        assert_eq!(a, TinyLlama::default().to_bytes());
        assert_ne!(a, TinyLlama { seed: 7, ..TinyLlama::default() }.to_bytes());
        assert_eq!(&a[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes([a[4], a[5], a[6], a[7]]), 3);
        // 1 embedding + 9 per layer + output norm + output.
        assert_eq!(u64::from_le_bytes(a[8..16].try_into().unwrap()), 1 + 9 * 2 + 2);
        assert_eq!(a.len() % ALIGNMENT, 0);
        assert_eq!(vocab_size(), 5 + 256 + 1 + 94 + 38);
    }
}
