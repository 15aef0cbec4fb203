//! Tool calls in the model's own output format: which format a chat template teaches (read from
//! its text), the llama.cpp grammar that makes the model write a well-formed call in it, and the
//! parser that turns the generated text back into calls.
//!
//! Three formats are known:
//! - Hermes / Qwen: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, once or
//!   more;
//! - Llama 3.x: one JSON object `{"name": ..., "parameters": {...}}`, optionally after
//!   `<|python_tag|>`;
//! - Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (and the newer
//!   `[TOOL_CALLS]name[ARGS]{...}`, parsed but not generated).
//!
//! Parsing never panics: text that does not hold well-formed calls is plain content.

use serde_json::{json, Value as Json};

use crate::engine::{Tool, ToolCall};

/// The name of the grammar's start rule (the JSON-schema grammar keeps `root` for the call
/// object itself).
pub(crate) const GRAMMAR_ROOT: &str = "tool-calls-root";

/// How a model writes tool calls, as its chat template teaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ToolFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes 2 Pro, Qwen 2.5 / 3 and
    /// other ChatML-based templates).
    Hermes,
    /// `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>` (Llama 3.1–3.3).
    Llama3,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}]` (Mistral's v3+ templates).
    Mistral,
}

impl ToolFormat {
    /// The format a template's text teaches, by the markers it writes: `[TOOL_CALLS]`
    /// (Mistral), `<tool_call>` with JSON inside (Hermes; not Qwen3-Coder's XML
    /// `<tool_call><function=...>`), `<|python_tag|>` or a Llama 3 header with `"parameters"`
    /// (Llama 3). `None` when none is there.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if template.contains("[TOOL_CALLS]") {
            Some(ToolFormat::Mistral)
        } else if template.contains("<function=") {
            None
        } else if template.contains("<tool_call>") {
            Some(ToolFormat::Hermes)
        } else if template.contains("<|python_tag|>")
            || (template.contains("<|start_header_id|>") && template.contains("parameters"))
        {
            Some(ToolFormat::Llama3)
        } else {
            None
        }
    }

    /// A short name: `hermes`, `llama3` or `mistral`.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3 => "llama3",
            ToolFormat::Mistral => "mistral",
        }
    }

    /// The strings that open a call. Generated text from the first of them on is held back
    /// (not streamed as content) and parsed when the generation ends; they also trigger the
    /// lazy grammar of `tool_choice: "auto"`.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => &["<tool_call>"],
            ToolFormat::Llama3 => &["<|python_tag|>", "{\"name\"", "{ \"name\""],
            ToolFormat::Mistral => &["[TOOL_CALLS]"],
        }
    }

    /// Strings of the format that a model's vocabulary may hold as control tokens (which render
    /// as nothing unless asked): the markers and the closing tags. While tools are on, such
    /// tokens are rendered as their text so the parser sees them.
    pub fn preserved(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => &["<tool_call>", "</tool_call>"],
            ToolFormat::Llama3 => &["<|python_tag|>"],
            ToolFormat::Mistral => &["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"],
        }
    }

    /// The key of a call object that holds the arguments.
    fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3 => "parameters",
            ToolFormat::Hermes | ToolFormat::Mistral => "arguments",
        }
    }

    /// A llama.cpp grammar (GBNF, start rule [`GRAMMAR_ROOT`]) for a model turn that is one or
    /// (with `parallel`, Hermes and Mistral) more calls of `tools`, each call's arguments
    /// constrained by its tool's JSON Schema.
    ///
    /// Errors: a tool's schema that llama.cpp's `json_schema_to_grammar` rejects, named.
    pub fn grammar(self, tools: &[Tool], parallel: bool) -> Result<String, String> {
        let key = self.arguments_key();
        let calls: Vec<Json> = tools
            .iter()
            .map(|t| {
                let params = if t.parameters.is_object() { t.parameters.clone() } else { json!({"type": "object"}) };
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, key: params},
                    "required": ["name", key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = if calls.len() == 1 { calls[0].clone() } else { json!({"anyOf": calls}) };
        let body = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            format!("the parameters of tool(s) {} cannot be turned into a grammar: {e}", names.join(", "))
        })?;
        let start = match (self, parallel) {
            (ToolFormat::Hermes, false) => r#""<tool_call>\n" root "\n"? "</tool_call>""#,
            (ToolFormat::Hermes, true) => {
                r#""<tool_call>\n" root "\n"? "</tool_call>" ("\n" "<tool_call>\n" root "\n"? "</tool_call>")*"#
            }
            (ToolFormat::Llama3, _) => r#""<|python_tag|>"? root"#,
            // Mistral v3 templates write `[TOOL_CALLS] [`; the space is optional.
            (ToolFormat::Mistral, false) => r#""[TOOL_CALLS]" " "? "[" root "]""#,
            (ToolFormat::Mistral, true) => r#""[TOOL_CALLS]" " "? "[" root ("," " "? root)* "]""#,
        };
        Ok(format!("{GRAMMAR_ROOT} ::= {start}\n{body}"))
    }

    /// The calls in `text` and the content around them, or `None` when `text` holds no call or
    /// a malformed one (then all of it is content).
    pub fn parse(self, text: &str) -> Option<Parsed> {
        let parsed = match self {
            ToolFormat::Hermes => parse_hermes(text),
            ToolFormat::Llama3 => parse_llama3(text),
            ToolFormat::Mistral => parse_mistral(text),
        }?;
        (!parsed.calls.is_empty()).then_some(parsed)
    }

    /// A new call id in the shape the format's templates accept: 9 letters and digits for
    /// Mistral (its templates refuse others), `call_` and 24 letters and digits otherwise.
    pub fn new_call_id(self) -> String {
        match self {
            ToolFormat::Mistral => (0..9).map(|_| fastrand::alphanumeric()).collect(),
            _ => format!("call_{}", (0..24).map(|_| fastrand::alphanumeric()).collect::<String>()),
        }
    }
}

/// A parsed model turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Text outside the calls, trimmed.
    pub content: String,
    /// The calls, in order; ids are not set yet (empty).
    pub calls: Vec<ToolCall>,
}

/// A call object: `name` and the arguments under `key` (or `arguments` / `parameters`), an
/// object or a JSON text of one; arguments as compact JSON.
fn call_from(v: &Json, key: &str) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.trim();
    if name.is_empty() {
        return None;
    }
    let args = v.get(key).or_else(|| v.get("arguments")).or_else(|| v.get("parameters"));
    let arguments = match args {
        None => "{}".to_owned(),
        Some(Json::String(s)) => match serde_json::from_str::<Json>(s) {
            Ok(o @ Json::Object(_)) => o.to_string(),
            _ => return None,
        },
        Some(o @ Json::Object(_)) => o.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall { id: String::new(), name: name.to_owned(), arguments })
}

/// The first JSON value at the start of `s` (after whitespace) and the rest of `s` after it.
fn json_prefix(s: &str) -> Option<(Json, &str)> {
    let mut it = serde_json::Deserializer::from_str(s).into_iter::<Json>();
    match it.next() {
        Some(Ok(v)) => Some((v, s.get(it.byte_offset()..).unwrap_or(""))),
        _ => None,
    }
}

fn join_content(parts: &[&str]) -> String {
    parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n")
}

fn parse_hermes(text: &str) -> Option<Parsed> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let first = text.find(OPEN)?;
    let mut content = vec![&text[..first]];
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(at) = rest.find(OPEN) {
        content.push(&rest[..at]);
        let body = &rest[at + OPEN.len()..];
        let (inner, after) = match body.find(CLOSE) {
            Some(end) => (&body[..end], &body[end + CLOSE.len()..]),
            // A last call the model ended without its closing tag.
            None => (body, ""),
        };
        let (v, tail) = json_prefix(inner)?;
        if !tail.trim().is_empty() {
            return None;
        }
        calls.push(call_from(&v, "arguments")?);
        rest = after;
    }
    content.push(rest);
    Some(Parsed { content: join_content(&content), calls })
}

fn parse_llama3(text: &str) -> Option<Parsed> {
    const TAG: &str = "<|python_tag|>";
    let (before, mut rest) = match text.find(TAG) {
        Some(at) => (&text[..at], &text[at + TAG.len()..]),
        None => {
            let at = text.find("{\"name\"").or_else(|| text.find("{ \"name\""))?;
            (&text[..at], &text[at..])
        }
    };
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if !rest.starts_with('{') {
            break;
        }
        let (v, tail) = json_prefix(rest)?;
        calls.push(call_from(&v, "parameters")?);
        rest = tail;
    }
    Some(Parsed { content: join_content(&[before, rest]), calls })
}

fn parse_mistral(text: &str) -> Option<Parsed> {
    const TAG: &str = "[TOOL_CALLS]";
    const ARGS: &str = "[ARGS]";
    let first = text.find(TAG)?;
    let mut content = vec![&text[..first]];
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(at) = rest.find(TAG) {
        content.push(&rest[..at]);
        let body = rest[at + TAG.len()..].trim_start();
        if body.starts_with('[') {
            let (v, tail) = json_prefix(body)?;
            for c in v.as_array()? {
                let mut call = call_from(c, "arguments")?;
                if let Some(id) = c.get("id").and_then(Json::as_str) {
                    call.id = id.to_owned();
                }
                calls.push(call);
            }
            rest = tail;
        } else {
            let sep = body.find(ARGS)?;
            let name = body[..sep].trim();
            let (args, tail) = json_prefix(&body[sep + ARGS.len()..])?;
            calls.push(call_from(&json!({"name": name, "arguments": args}), "arguments")?);
            rest = tail;
        }
    }
    content.push(rest);
    Some(Parsed { content: join_content(&content), calls })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall { id: String::new(), name: name.into(), arguments: arguments.into() }
    }

    #[test]
    fn the_format_is_read_from_the_template_text() {
        assert_eq!(ToolFormat::detect("{{ '<tool_call>' }}"), Some(ToolFormat::Hermes));
        assert_eq!(ToolFormat::detect("[AVAILABLE_TOOLS] ... [TOOL_CALLS] <tool_call>"), Some(ToolFormat::Mistral));
        assert_eq!(ToolFormat::detect("<|python_tag|>"), Some(ToolFormat::Llama3));
        assert_eq!(
            ToolFormat::detect("<|start_header_id|>{\"name\": function name, \"parameters\": ...}"),
            Some(ToolFormat::Llama3)
        );
        assert_eq!(ToolFormat::detect("<|im_start|>{{ m.content }}"), None);
        // Qwen3-Coder's XML calls are another format.
        assert_eq!(ToolFormat::detect("<tool_call>\n<function={{ name }}>\n<parameter=x>"), None);
    }

    #[test]
    fn hermes_calls_are_parsed_with_the_content_around_them() {
        let p = ToolFormat::Hermes
            .parse("Let me look.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>{\"name\": \"time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}</tool_call>")
            .unwrap();
        assert_eq!(p.content, "Let me look.");
        assert_eq!(p.calls, vec![call("weather", r#"{"city":"Oslo"}"#), call("time", r#"{"tz":"CET"}"#)]);
        // A last call without its closing tag, and no arguments at all.
        let p = ToolFormat::Hermes.parse("<tool_call>{\"name\": \"now\"}").unwrap();
        assert_eq!((p.content.as_str(), p.calls), ("", vec![call("now", "{}")]));
    }

    #[test]
    fn malformed_hermes_output_is_plain_content() {
        for text in [
            "no call here",
            "<tool_call>{\"name\": \"weather\", \"arguments\": {\"city\": ",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"\"}</tool_call>",
            "<tool_call>{\"name\": \"w\", \"arguments\": [1]}</tool_call>",
            "<tool_call>{\"name\": \"w\", \"arguments\": \"not json\"}</tool_call>",
            "<tool_call>{\"name\": \"w\"} trailing</tool_call>",
            "<tool_call>[1, 2]</tool_call>",
            "<tool_call></tool_call>",
            "<tool_call>",
            "<tool_call>{\"name\": \"ok\"}</tool_call><tool_call>broken</tool_call>",
        ] {
            assert_eq!(ToolFormat::Hermes.parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn llama3_calls_with_and_without_the_python_tag() {
        let p = ToolFormat::Llama3.parse("{\"name\": \"weather\", \"parameters\": {\"city\": \"Oslo\"}}").unwrap();
        assert_eq!((p.content.as_str(), p.calls), ("", vec![call("weather", r#"{"city":"Oslo"}"#)]));
        let p = ToolFormat::Llama3
            .parse("<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": {\"x\": 1}}")
            .unwrap();
        assert_eq!(p.calls, vec![call("a", "{}"), call("b", r#"{"x":1}"#)]);
        assert_eq!(ToolFormat::Llama3.parse("The answer is {\"name\": broken"), None);
        assert_eq!(ToolFormat::Llama3.parse("{\"city\": \"Oslo\"}"), None);
        assert_eq!(ToolFormat::Llama3.parse("<|python_tag|>print(1)"), None);
    }

    #[test]
    fn mistral_calls_in_both_shapes() {
        let p = ToolFormat::Mistral
            .parse("Sure. [TOOL_CALLS][{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}, \"id\": \"abc123XYZ\"}, {\"name\": \"t\", \"arguments\": {}}]")
            .unwrap();
        assert_eq!(p.content, "Sure.");
        assert_eq!(p.calls[0].id, "abc123XYZ");
        assert_eq!((p.calls[0].name.as_str(), p.calls[0].arguments.as_str()), ("weather", r#"{"city":"Oslo"}"#));
        assert_eq!(p.calls[1], call("t", "{}"));
        let p =
            ToolFormat::Mistral.parse("[TOOL_CALLS]weather[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]t[ARGS]{}").unwrap();
        assert_eq!(p.calls, vec![call("weather", r#"{"city":"Oslo"}"#), call("t", "{}")]);
        for bad in [
            "[TOOL_CALLS]",
            "[TOOL_CALLS][{\"name\": 1}]",
            "[TOOL_CALLS][{\"name\": \"w\"",
            "[TOOL_CALLS]w{}",
            "[TOOL_CALLS][]",
        ] {
            assert_eq!(ToolFormat::Mistral.parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grammars_start_with_the_format_and_constrain_the_arguments() {
        let tools = [
            Tool {
                name: "a".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}),
            },
            Tool { name: "b".into(), description: None, parameters: json!({"type": "object", "properties": {}}) },
        ];
        let g = ToolFormat::Hermes.grammar(&tools, false).unwrap();
        assert!(g.starts_with("tool-calls-root ::= \"<tool_call>\\n\" root \"\\n\"? \"</tool_call>\"\n"), "{g}");
        assert!(g.contains("root ::=") && g.contains("\"\\\"a\\\"\"") && g.contains("integer"), "{g}");
        let g = ToolFormat::Mistral.grammar(&tools[..1], true).unwrap();
        assert!(
            g.starts_with("tool-calls-root ::= \"[TOOL_CALLS]\" \" \"? \"[\" root (\",\" \" \"? root)* \"]\""),
            "{g}"
        );
        let g = ToolFormat::Llama3.grammar(&tools[..1], true).unwrap();
        assert!(g.contains("parameters"), "{g}");
        let bad =
            [Tool { name: "broken".into(), description: None, parameters: json!({"type": "object", "properties": 5}) }];
        let err = ToolFormat::Hermes.grammar(&bad, false).unwrap_err();
        assert!(err.starts_with("the parameters of tool(s) broken cannot be turned into a grammar"), "{err}");
    }

    #[test]
    fn call_ids_have_the_shape_the_format_wants() {
        let id = ToolFormat::Mistral.new_call_id();
        assert!(id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        let id = ToolFormat::Hermes.new_call_id();
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
    }
}
