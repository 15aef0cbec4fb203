//! The chat templates of well-known model families, for GGUF files that carry none
//! (`tokenizer.chat_template` absent, as in base models and many conversions) or one MiniJinja
//! cannot run: the engine then prompts the model the way its architecture's instruction-tuned
//! releases were trained, and says so in the log and in `triage models`.
//!
//! Each template is written here as Jinja (run by the same MiniJinja environment as a file's own
//! template) after the family's published format: Gemma's `<start_of_turn>user` /
//! `<start_of_turn>model` turns with the system prompt folded into the first user turn (Gemma
//! has no system role: Google's Gemma 3 template does the same); Llama 3's
//! `<|start_header_id|>role<|end_header_id|>` … `<|eot_id|>`; Llama 2's `[INST] <<SYS>>` …
//! `[/INST]`; Mistral's `[INST]` … `[/INST]` with the system prompt before the first user
//! message; ChatML `<|im_start|>role` … `<|im_end|>` (Qwen); Phi-3's `<|user|>` … `<|end|>`.

use std::fmt;

/// Where the engine's prompt format comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TemplateSource {
    /// The model file's own `tokenizer.chat_template`, run as Jinja.
    File,
    /// The model file's template, applied by llama.cpp's built-in matcher (MiniJinja cannot run
    /// it, and the architecture has no known template; requests with tools are refused).
    FileBuiltin,
    /// The provider's `chat_template` setting.
    Configured,
    /// The known template of the model's family (the file has none that can be run).
    Family {
        /// The family, e.g. `Gemma`.
        family: String,
        /// Why the file's own template is not used: `the file has none`, or MiniJinja's error.
        why: String,
    },
}

impl fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateSource::File => write!(f, "the file's own chat template"),
            TemplateSource::FileBuiltin => {
                write!(f, "the file's chat template through llama.cpp's built-in templates (no tools)")
            }
            TemplateSource::Configured => write!(f, "the chat_template of the provider's config"),
            TemplateSource::Family { family, why } => write!(f, "the {family} template ({why})"),
        }
    }
}

/// A family's template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Known {
    /// The family's name, as shown to users.
    pub family: &'static str,
    /// The template, Jinja.
    pub source: &'static str,
}

const GEMMA: Known = Known {
    family: "Gemma",
    source: "{{ bos_token }}{% if messages and messages[0].role == 'system' %}{% set prefix = (messages[0].content | trim) + '\\n\\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% if not turns and prefix %}{{ '<start_of_turn>user\\n' + (prefix | trim) + '<end_of_turn>\\n' }}{% endif %}{% for m in turns %}{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else 'user') + '\\n' + (prefix if loop.first else '') + (m.content | trim) + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
};

const LLAMA3: Known = Known {
    family: "Llama 3",
    source: "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + ('ipython' if m.role == 'tool' else m.role) + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
};

const LLAMA2: Known = Known {
    family: "Llama 2",
    source: "{% if messages and messages[0].role == 'system' %}{% set prefix = '<<SYS>>\\n' + (messages[0].content | trim) + '\\n<</SYS>>\\n\\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% if not turns and prefix %}{{ bos_token + '[INST] ' + prefix + ' [/INST]' }}{% endif %}{% for m in turns %}{% if m.role == 'assistant' %}{{ ' ' + (m.content | trim) + ' ' + eos_token }}{% else %}{{ bos_token + '[INST] ' + (prefix if loop.first else '') + (m.content | trim) + ' [/INST]' }}{% endif %}{% endfor %}",
};

const MISTRAL: Known = Known {
    family: "Mistral",
    source: "{{ bos_token }}{% if messages and messages[0].role == 'system' %}{% set prefix = (messages[0].content | trim) + '\\n\\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% if not turns and prefix %}{{ '[INST] ' + (prefix | trim) + ' [/INST]' }}{% endif %}{% for m in turns %}{% if m.role == 'assistant' %}{{ ' ' + (m.content | trim) + eos_token }}{% else %}{{ '[INST] ' + (prefix if loop.first else '') + (m.content | trim) + ' [/INST]' }}{% endif %}{% endfor %}",
};

const CHATML: Known = Known {
    family: "ChatML (Qwen)",
    source: "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
};

const PHI3: Known = Known {
    family: "Phi-3",
    source: "{% for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
};

/// The families this module knows, for messages.
pub(crate) const FAMILIES: &str = "Gemma, Llama 2, Llama 3, Mistral, Qwen (ChatML), Phi-3";

/// The known template for a model of `architecture` (`general.architecture`), whose tokenizer
/// is `tokenizer_model` (`tokenizer.ggml.model`: `gpt2` for BPE as in Llama 3, `llama` for
/// SentencePiece as in Llama 2 and Mistral) and whose `general.name` is `name`; `None` for an
/// architecture without one.
pub(crate) fn for_model(architecture: &str, tokenizer_model: Option<&str>, name: Option<&str>) -> Option<Known> {
    let arch = architecture.to_ascii_lowercase();
    let named = |s: &str| name.is_some_and(|n| n.to_ascii_lowercase().contains(s));
    match arch.as_str() {
        a if a.starts_with("gemma") => Some(GEMMA),
        a if a.starts_with("qwen") => Some(CHATML),
        "phi3" => Some(PHI3),
        "mistral" => Some(MISTRAL),
        // GGUF conversions of Llama 3, Llama 2 and Mistral 7B all say `llama`.
        "llama" if tokenizer_model == Some("gpt2") => Some(LLAMA3),
        "llama" if named("mistral") || named("mixtral") => Some(MISTRAL),
        "llama" => Some(LLAMA2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::Message;
    use crate::template::ChatTemplate;

    fn render(k: Known, messages: &[Message]) -> String {
        ChatTemplate::new(k.source, "<bos>", "<eos>").unwrap().render(messages, None, true).unwrap()
    }

    fn chat() -> Vec<Message> {
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi "),
            Message::new("assistant", "Hello."),
            Message::new("user", "Capital of France?"),
        ]
    }

    #[test]
    fn gemma_folds_the_system_prompt_into_the_first_user_turn() {
        assert_eq!(
            render(GEMMA, &chat()),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
        );
        // Without a system prompt, no prefix; a system prompt alone still reaches the model.
        assert_eq!(
            render(GEMMA, &[Message::new("user", "Hi")]),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            render(GEMMA, &[Message::new("system", "Be brief.")]),
            "<bos><start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn the_other_families_write_their_published_formats() {
        assert_eq!(
            render(LLAMA3, &chat()[..2]),
            "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render(LLAMA2, &chat()),
            "<bos>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. <eos><bos>[INST] Capital of France? [/INST]"
        );
        assert_eq!(
            render(MISTRAL, &chat()),
            "<bos>[INST] Be brief.\n\nHi [/INST] Hello.<eos>[INST] Capital of France? [/INST]"
        );
        assert_eq!(
            render(CHATML, &chat()[..2]),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(render(PHI3, &chat()[1..2]), "<|user|>\nHi <|end|>\n<|assistant|>\n");
    }

    #[test]
    fn architectures_map_to_their_family() {
        let family = |a: &str, t: Option<&str>, n: Option<&str>| for_model(a, t, n).map(|k| k.family);
        assert_eq!(family("gemma3", Some("llama"), None), Some("Gemma"));
        assert_eq!(family("gemma2", None, None), Some("Gemma"));
        assert_eq!(family("qwen2", Some("gpt2"), None), Some("ChatML (Qwen)"));
        assert_eq!(family("qwen3moe", None, None), Some("ChatML (Qwen)"));
        assert_eq!(family("phi3", None, None), Some("Phi-3"));
        assert_eq!(family("llama", Some("gpt2"), Some("Meta Llama 3.1 8B")), Some("Llama 3"));
        assert_eq!(family("llama", Some("llama"), Some("Mistral 7B Instruct v0.2")), Some("Mistral"));
        assert_eq!(family("llama", Some("llama"), Some("Llama 2 7b")), Some("Llama 2"));
        assert_eq!(family("mamba", None, None), None);
    }
}
