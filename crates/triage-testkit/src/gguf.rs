//! A llama-architecture GGUF with random weights, tiny by default, for tests of the local engine
//! (and, made larger, for its throughput benchmark).
//!
//! No real weights can be downloaded where Triage is tested, so the tests write their own model:
//! by default 2 layers, 64-wide embeddings, 4 heads, a 128-wide feed-forward and a 360-token
//! SentencePiece ("llama") vocabulary with byte fallback, so any text tokenizes. Its chat template
//! is ChatML, which llama.cpp recognises, or ([`TinyLlama::chat_template`]) ChatML with tools.
//! The weights come from a seeded generator: the same seed writes the same file, byte for byte,
//! and the same model answers the same prompt the same way.
//!
//! Every dimension can be changed, the vocabulary padded to any size with unused tokens, and the
//! matrices written as F16 instead of F32 (llama.cpp's `llama-quantize` takes such a file to
//! Q8_0, Q4_K_M, ...): the speed of a model depends on its shape and number format, not on the
//! values of its weights, so a random model of a real model's shape runs as fast as the real one.
//!
//! The file format is GGUF version 3 as specified in ggml's `docs/gguf.md`: magic `GGUF`, version,
//! tensor count, metadata count, metadata key/values, tensor infos, padding to
//! `general.alignment` (32), then the tensor data (F32, or F16 matrices), each tensor aligned.

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

/// How the weight matrices are stored (the norms are always F32, as llama.cpp wants them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (IEEE half): half the size, and what `llama-quantize` starts from.
    F16,
    /// llama.cpp's Q8_0 blocks (32 weights: an F16 scale and 32 signed bytes), random bytes
    /// under a scale that keeps the weights at the F32 model's size. Rows must be multiples of
    /// 32 wide (others stay F16).
    Q8_0,
    /// As llama-quantize's Q4_K_M lays a model out: Q4_K super-blocks (256 weights: F16 scale
    /// and minimum, 6-bit sub-block scales and minimums, 4-bit values) for most matrices, Q6_K
    /// (6-bit values, 8-bit sub-block scales) for `attn_v`, `ffn_down` and `output`; random bytes
    /// under scales that keep the weights at the F32 model's size. Rows must be multiples of 256
    /// wide (others stay F16). The blocks are what the real kernels read: a random block is as
    /// valid a block as a trained one.
    Q4KM,
}

/// Shape of the model.
#[derive(Debug, Clone, Copy)]
pub struct TinyLlama {
    /// Seed of the weights.
    pub seed: u64,
    /// Transformer blocks.
    pub layers: u32,
    /// Embedding width.
    pub embd: u32,
    /// Attention heads.
    pub heads: u32,
    /// Key/value heads (grouped-query attention when fewer than `heads`; must divide it); 0 =
    /// as many as `heads`.
    pub kv_heads: u32,
    /// Feed-forward width.
    pub ff: u32,
    /// Training context length written to the metadata, in tokens.
    pub context_length: u32,
    /// `tokenizer.chat_template`: [`CHATML_TEMPLATE`] by default, [`CHATML_TOOLS_TEMPLATE`] for
    /// tool calling; empty: the file has no template (as a base model's).
    pub chat_template: &'static str,
    /// Vocabulary size: the tokens below, padded with unused tokens (`<pad_N>`, never produced by
    /// the tokenizer) up to this many; a smaller number leaves the vocabulary as it is.
    pub vocab: u32,
    /// Number format of the matrices.
    pub weights: Weights,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            seed: 42,
            layers: 2,
            embd: 64,
            heads: 4,
            kv_heads: 0,
            ff: 128,
            context_length: 2048,
            chat_template: CHATML_TEMPLATE,
            vocab: 0,
            weights: Weights::F32,
        }
    }
}

// Token types of llama.cpp's `llama_token_type`.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;
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

/// `vocab()` padded with unused tokens to `size` entries.
fn padded_vocab(size: u32) -> Vec<(String, f32, i32)> {
    let mut v = vocab();
    for i in v.len()..size as usize {
        v.push((format!("<pad_{i}>"), -1000.0, UNUSED));
    }
    v
}

/// Size of the tiny (unpadded) vocabulary.
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

/// `x` as IEEE half-precision bits, rounded to nearest even (no NaN handling: the weights are
/// finite).
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let mant = b & 0x7f_ffff;
    if exp >= 0x1f {
        return sign | 0x7c00; // too large: infinity
    }
    if exp <= 0 {
        if exp < -10 {
            return sign; // too small: zero
        }
        // Subnormal: the implicit 1 made explicit, shifted into place, rounded.
        let m = mant | 0x80_0000;
        let shift = (14 - exp) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut h = m >> shift;
        if rest > half || (rest == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((exp as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1; // may carry into the exponent, which is the right answer
    }
    sign | h as u16
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

/// How a tensor's values are made.
enum Init {
    /// Uniform in [-scale, scale), from the seeded stream.
    Random(f32),
    /// All 1 (the norms).
    Ones,
}

struct Tensor {
    name: String,
    /// ggml order: `dims[0]` varies fastest.
    dims: Vec<u64>,
    init: Init,
    /// Stored as F16 (else F32, unless `quant`).
    half: bool,
    /// Stored in quantized blocks.
    quant: Option<Quant>,
}

/// ggml's quantized block formats written here (`ggml-common.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quant {
    Q8_0,
    Q4K,
    Q6K,
}

impl Quant {
    /// (weights per block, bytes per block, ggml type id).
    fn block(self) -> (usize, usize, u32) {
        match self {
            Quant::Q8_0 => (32, 34, 8),
            Quant::Q4K => (256, 144, 12),
            Quant::Q6K => (256, 210, 14),
        }
    }

    /// One block of random values whose weights are about `scale` in size.
    fn write_block(self, rng: &mut Rng, scale: f32, buf: &mut Vec<u8>) {
        let mut bytes = |n: usize, buf: &mut Vec<u8>| {
            for _ in 0..n {
                buf.push((rng.next_f32() * 128.0 + 128.0) as u8);
            }
        };
        match self {
            Quant::Q8_0 => {
                // y = d * q, q in [-128, 127].
                buf.extend_from_slice(&f16_bits(scale / 127.0).to_le_bytes());
                bytes(32, buf);
            }
            Quant::Q4K => {
                // y = d * sc * q - dmin * m, sc and m in [0, 63], q in [0, 15].
                let d = scale / (63.0 * 7.5);
                buf.extend_from_slice(&f16_bits(d).to_le_bytes());
                buf.extend_from_slice(&f16_bits(d * 7.5).to_le_bytes());
                bytes(12 + 128, buf);
            }
            Quant::Q6K => {
                // y = d * sc * (q - 32), sc in [-128, 127], q in [0, 63].
                bytes(128 + 64 + 16, buf);
                buf.extend_from_slice(&f16_bits(scale / (128.0 * 32.0)).to_le_bytes());
            }
        }
    }
}

impl Tensor {
    fn len(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    fn bytes(&self) -> u64 {
        match self.quant {
            Some(q) => {
                let (n, b, _) = q.block();
                (self.len() / n * b) as u64
            }
            None => (self.len() * if self.half { 2 } else { 4 }) as u64,
        }
    }

    fn ggml_type(&self) -> u32 {
        match self.quant {
            Some(q) => q.block().2,
            None if self.half => GGML_F16,
            None => GGML_F32,
        }
    }
}

// ggml tensor types.
const GGML_F32: u32 = 0;
const GGML_F16: u32 = 1;

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
    while !out.len().is_multiple_of(ALIGNMENT) {
        out.push(0);
    }
}

impl TinyLlama {
    /// The metadata and the tensors (in file order, which is also the order their values are
    /// drawn from the seeded stream).
    fn layout(&self) -> (Vec<(&'static str, Value)>, Vec<Tensor>) {
        let vocab = padded_vocab(self.vocab);
        let n_vocab = vocab.len() as u64;
        let kv_heads = if self.kv_heads == 0 { self.heads } else { self.kv_heads };
        let (embd, ff) = (u64::from(self.embd), u64::from(self.ff));
        let kv_embd = embd / u64::from(self.heads.max(1)) * u64::from(kv_heads);
        let mut kv: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::Str("llama".into())),
            ("general.name", Value::Str(format!("triage-tiny-llama-seed{}", self.seed))),
            ("general.alignment", Value::U32(ALIGNMENT as u32)),
            ("llama.context_length", Value::U32(self.context_length)),
            ("llama.embedding_length", Value::U32(self.embd)),
            ("llama.block_count", Value::U32(self.layers)),
            ("llama.feed_forward_length", Value::U32(self.ff)),
            ("llama.attention.head_count", Value::U32(self.heads)),
            ("llama.attention.head_count_kv", Value::U32(kv_heads)),
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
        // An empty template: the file has none, as base models' files.
        kv.retain(|(k, v)| !(*k == "tokenizer.chat_template" && matches!(v, Value::Str(s) if s.is_empty())));

        let weights = self.weights;
        let ones = |name: String| Tensor { name, dims: vec![embd], init: Init::Ones, half: false, quant: None };
        let random = |name: String, dims: Vec<u64>, scale: f32| {
            let wide = |n: u64| dims[0].is_multiple_of(n);
            let quant = match weights {
                Weights::Q8_0 if wide(32) => Some(Quant::Q8_0),
                Weights::Q4KM if wide(256) => {
                    let six = name == "output.weight" || name.contains("attn_v") || name.contains("ffn_down");
                    Some(if six { Quant::Q6K } else { Quant::Q4K })
                }
                _ => None,
            };
            Tensor { name, dims, init: Init::Random(scale), half: weights != Weights::F32, quant }
        };
        let w = 1.0 / (embd as f32).sqrt() * 1.7;
        let mut tensors = vec![random("token_embd.weight".into(), vec![embd, n_vocab], 1.0)];
        for i in 0..self.layers {
            tensors.push(ones(format!("blk.{i}.attn_norm.weight")));
            tensors.push(random(format!("blk.{i}.attn_q.weight"), vec![embd, embd], w));
            tensors.push(random(format!("blk.{i}.attn_k.weight"), vec![embd, kv_embd], w));
            tensors.push(random(format!("blk.{i}.attn_v.weight"), vec![embd, kv_embd], w));
            tensors.push(random(format!("blk.{i}.attn_output.weight"), vec![embd, embd], w));
            tensors.push(ones(format!("blk.{i}.ffn_norm.weight")));
            tensors.push(random(format!("blk.{i}.ffn_gate.weight"), vec![embd, ff], w));
            tensors.push(random(format!("blk.{i}.ffn_up.weight"), vec![embd, ff], w));
            tensors.push(random(format!("blk.{i}.ffn_down.weight"), vec![ff, embd], 1.0 / (ff as f32).sqrt() * 1.7));
        }
        tensors.push(ones("output_norm.weight".into()));
        tensors.push(random("output.weight".into(), vec![embd, n_vocab], 1.0 / (embd as f32).sqrt() * 3.0));
        (kv, tensors)
    }

    /// Writes the whole GGUF file to `out`, generating the weights as it goes (a model of
    /// hundreds of millions of parameters never sits in memory).
    ///
    /// Errors: `out`'s.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let (kv, tensors) = self.layout();
        let mut head = Vec::with_capacity(1 << 16);
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in &kv {
            put_str(&mut head, k);
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset += t.bytes().div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64;
        }
        pad(&mut head);
        out.write_all(&head)?;

        let mut rng = Rng(self.seed);
        let mut buf = Vec::with_capacity(1 << 16);
        for t in &tensors {
            let n = t.len();
            let mut done = 0;
            if let (Some(q), Init::Random(scale)) = (t.quant, &t.init) {
                let (per_block, _, _) = q.block();
                for _ in 0..n / per_block {
                    buf.clear();
                    q.write_block(&mut rng, *scale, &mut buf);
                    out.write_all(&buf)?;
                }
                done = n;
            }
            while done < n {
                buf.clear();
                let m = (n - done).min(1 << 14);
                for _ in 0..m {
                    let x = match t.init {
                        Init::Random(scale) => rng.next_f32() * scale,
                        Init::Ones => 1.0,
                    };
                    if t.half {
                        buf.extend_from_slice(&f16_bits(x).to_le_bytes());
                    } else {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                }
                out.write_all(&buf)?;
                done += m;
            }
            let rem = (t.bytes() % ALIGNMENT as u64) as usize;
            if rem != 0 {
                out.write_all(&[0u8; ALIGNMENT][..ALIGNMENT - rem])?;
            }
        }
        Ok(())
    }

    /// The whole GGUF file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 20);
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Parameters of the model (weights and norms).
    pub fn parameters(&self) -> u64 {
        self.layout().1.iter().map(|t| t.len() as u64).sum()
    }

    /// Writes the model to `path`.
    ///
    /// Errors: the file cannot be written.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut f = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        self.write_to(&mut f)?;
        f.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
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

    const DEFAULT_HASH: &str = "0d272c1398e94ef2";

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
        // The file the tests have always used (this hash names it in `write_temp`).
        let hash = a.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        assert_eq!(format!("{hash:016x}"), DEFAULT_HASH);
    }

    #[test]
    fn half_floats_round_to_nearest_even() {
        for (x, bits) in [
            (0.0f32, 0x0000u16),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.5, 0x3800),
            (65504.0, 0x7bff),
            (1e6, 0x7c00),
            (6.1035156e-5, 0x0400),       // smallest normal
            (5.9604645e-8, 0x0001),       // smallest subnormal
            (1.0 + 1.0 / 2048.0, 0x3c00), // a tie: to even
            (1.0 + 3.0 / 2048.0, 0x3c02), // a tie: to even, upwards
            (0.1, 0x2e66),
        ] {
            assert_eq!(f16_bits(x), bits, "{x}");
        }
    }

    #[test]
    fn a_larger_model_pads_its_vocabulary_and_halves_its_matrices() {
        let m = TinyLlama { vocab: 1000, kv_heads: 2, weights: Weights::F16, ..TinyLlama::default() };
        let bytes = m.to_bytes();
        let (_, tensors) = m.layout();
        assert_eq!(tensors[0].dims, vec![64, 1000]);
        assert!(tensors[0].half);
        assert_eq!(tensors[3].dims, vec![64, 32], "k: 2 of 4 heads of 16");
        assert!(!tensors[1].half, "norms stay F32");
        let data: u64 = tensors.iter().map(|t| t.bytes().div_ceil(32) * 32).sum();
        assert!(bytes.len() as u64 > data && bytes.len().is_multiple_of(ALIGNMENT));
        assert_eq!(m.parameters(), 2 * 64 * 1000 + 2 * (2 * 64 + 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64);
        assert!(padded_vocab(1000)[999].0 == "<pad_999>");
    }
}
