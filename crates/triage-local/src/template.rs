//! The model's chat template (`tokenizer.chat_template`) run as real Jinja, the way Hugging Face
//! transformers' `apply_chat_template` and llama.cpp's `--jinja` mode do, with MiniJinja.
//!
//! The template sees what transformers gives it: `messages` (OpenAI-shaped: `role`, `content`,
//! an assistant's `tool_calls` with `function.arguments` as an object, a tool result's
//! `tool_call_id` and `name`), `tools` (the OpenAI list `{type: "function", function: {name,
//! description, parameters}}`, or none), `add_generation_prompt`, `bos_token` and `eos_token`;
//! the functions `raise_exception(message)` and `strftime_now(format)`; the filter `tojson`
//! (Python's `json.dumps` output: `", "` and `": "` separators, non-ASCII kept, `indent` and
//! `sort_keys` honoured); Python string and dict methods (`.strip()`, `.split()`,
//! `.startswith()`, `.items()`, ...) through `minijinja-contrib`'s pycompat; and transformers'
//! whitespace settings (`trim_blocks`, `lstrip_blocks`).

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{json, Map, Value as Json};

use crate::engine::{Message, Tool};

/// Marks an error raised by the template itself (`raise_exception`), as opposed to one MiniJinja
/// met running it.
const RAISED: &str = "the chat template refused the conversation: ";

/// Why a render failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RenderError {
    /// The template called `raise_exception(message)`: it does not accept this conversation
    /// (roles out of order, a tool call id of the wrong shape, ...).
    Raised(String),
    /// MiniJinja could not run the template (a construct or method it lacks, a type error).
    Failed(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Raised(m) => write!(f, "{RAISED}{m}"),
            RenderError::Failed(m) => write!(f, "the chat template cannot be run as Jinja: {m}"),
        }
    }
}

/// A compiled chat template and the special tokens it is given.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source_len", &self.source.len()).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`.
    ///
    /// Errors: the template is not valid Jinja (as MiniJinja reads it), with MiniJinja's message.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
        });
        env.add_function("strftime_now", |format: String| strftime(&format, unix_now()));
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat_template", source.to_owned()).map_err(|e| detailed(&e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS token's text, as given to the template.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// Renders the conversation; `tools` is passed as none when `None` or empty.
    ///
    /// Errors: [`RenderError`].
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&[Tool]>,
        add_generation_prompt: bool,
    ) -> Result<String, RenderError> {
        let template = self.env.get_template("chat_template").map_err(|e| RenderError::Failed(detailed(&e)))?;
        let messages: Vec<Json> = messages.iter().map(message_json).collect();
        let tools: Option<Vec<Json>> = tools.filter(|t| !t.is_empty()).map(|t| t.iter().map(tool_json).collect());
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(&messages)),
            tools => tools.map(|t| Value::from(minijinja::value::Serde(&t))).unwrap_or(Value::from(())),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        template.render(ctx).map_err(|e| {
            let text = detailed(&e);
            match text.find(RAISED) {
                Some(at) => {
                    let rest = &text[at + RAISED.len()..];
                    let rest = rest.lines().next().unwrap_or(rest);
                    // MiniJinja appends where: " (in chat_template:4)".
                    let rest = rest.find(" (in chat_template:").map_or(rest, |end| &rest[..end]);
                    RenderError::Raised(rest.trim().to_owned())
                }
                None => RenderError::Failed(text),
            }
        })
    }
}

/// An error with its causes, on one line.
fn detailed(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A message as templates read it. `tool_calls`, `tool_call_id` and `name` are present only when
/// set; a call's `arguments` is the parsed object (what Hermes, Qwen, Llama 3.1 and Mistral
/// templates pass to `tojson`), or the raw text when it is not JSON.
pub(crate) fn message_json(m: &Message) -> Json {
    let mut o = Map::new();
    o.insert("role".into(), Json::String(m.role.clone()));
    o.insert("content".into(), Json::String(m.content.clone()));
    if !m.tool_calls.is_empty() {
        let calls: Vec<Json> = m
            .tool_calls
            .iter()
            .map(|c| {
                let args = if c.arguments.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str::<Json>(&c.arguments).unwrap_or_else(|_| Json::String(c.arguments.clone()))
                };
                json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
            })
            .collect();
        o.insert("tool_calls".into(), Json::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id".into(), Json::String(id.clone()));
    }
    if let Some(name) = &m.name {
        o.insert("name".into(), Json::String(name.clone()));
    }
    Json::Object(o)
}

/// A tool as OpenAI lists it (and transformers passes it on).
pub(crate) fn tool_json(t: &Tool) -> Json {
    let mut f = Map::new();
    f.insert("name".into(), Json::String(t.name.clone()));
    if let Some(d) = &t.description {
        f.insert("description".into(), Json::String(d.clone()));
    }
    f.insert("parameters".into(), t.parameters.clone());
    json!({"type": "function", "function": Json::Object(f)})
}

/// Jinja's `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent, sort_keys=sort_keys)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_usize() {
            Some(n) => Some(" ".repeat(n)),
            None => Some(v.as_str().map(str::to_owned).unwrap_or_default()),
        },
    };
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot serialise: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent.as_deref(), sort_keys.unwrap_or(false), 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Writes `v` as Python's `json.dumps` does (with `ensure_ascii=False`).
pub(crate) fn python_json(v: &Json, indent: Option<&str>, sort_keys: bool, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, sort_keys, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, sort_keys, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `strftime(format)` of the UTC time `unix` (seconds): `%Y %y %m %d %e %j %H %I %M %S %p %a %A
/// %b %B %h %%`, the others copied as they are.
fn strftime(format: &str, unix: i64) -> String {
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(leap && month > 2);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::ToolCall;

    fn t(source: &str) -> ChatTemplate {
        ChatTemplate::new(source, "<s>", "</s>").unwrap()
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let v = json!({"b": [1, 2.5, "é\"\n"], "a": {}, "c": null, "d": true});
        let mut out = String::new();
        python_json(&v, None, false, 0, &mut out);
        assert_eq!(out, r#"{"b": [1, 2.5, "é\"\n"], "a": {}, "c": null, "d": true}"#);
        out.clear();
        python_json(&json!({"b": [1], "a": 2}), Some("  "), true, 0, &mut out);
        assert_eq!(out, "{\n  \"a\": 2,\n  \"b\": [\n    1\n  ]\n}");
        let tpl = t("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'a<b' | tojson }}");
        let env_out = tpl
            .env
            .get_template("chat_template")
            .unwrap()
            .render(minijinja::context! { x => Value::from(minijinja::value::Serde(json!({"k": [1]}))) })
            .unwrap();
        assert_eq!(env_out, "{\"k\": [1]}|{\n  \"k\": [\n    1\n  ]\n}|\"a<b\"");
    }

    #[test]
    fn python_methods_trim_blocks_and_raise_exception_work() {
        let tpl = t("{% for m in messages %}\n  {{ m.content.strip().upper() }}{% if m.content.startswith(' x') %}!{% endif %}\n{% endfor %}\n{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}");
        let one = [Message::new("user", " xyz ")];
        // trim_blocks drops the newline after each block tag; lstrip_blocks leaves the spaces
        // before a `{{`.
        assert_eq!(tpl.render(&one, None, true).unwrap(), "  XYZ!");
        let two = [Message::new("user", "a"), Message::new("user", "b")];
        assert_eq!(tpl.render(&two, None, true), Err(RenderError::Raised("only one message".into())));
        assert!(matches!(
            t("{{ messages[0].content.nosuchmethod() }}").render(&one, None, true),
            Err(RenderError::Failed(_))
        ));
    }

    #[test]
    fn tool_calls_reach_the_template_with_object_arguments() {
        let tpl = t("{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }}={{ c.function.arguments.city }}/{{ c.function.arguments | tojson }}{% endfor %}{% if m.role == 'tool' %}[{{ m.tool_call_id }}:{{ m.content }}]{% endif %}{% endfor %}{% if tools is not none %}{{ tools[0].function.name }}{% endif %}");
        let mut call = Message::new("assistant", "");
        call.tool_calls =
            vec![ToolCall { id: "call_1".into(), name: "weather".into(), arguments: r#"{"city":"Oslo"}"#.into() }];
        let mut result = Message::new("tool", "12C");
        result.tool_call_id = Some("call_1".into());
        let tools = [Tool { name: "weather".into(), description: None, parameters: json!({"type": "object"}) }];
        let out = tpl.render(&[call.clone(), result.clone()], Some(&tools), true).unwrap();
        assert_eq!(out, r#"weather=Oslo/{"city": "Oslo"}[call_1:12C]weather"#);
        assert_eq!(tpl.render(&[call, result], None, true).unwrap(), r#"weather=Oslo/{"city": "Oslo"}[call_1:12C]"#);
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %y %%", t),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM 24 %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    }
}
