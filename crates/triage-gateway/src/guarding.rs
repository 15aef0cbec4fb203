//! The sensitive-content policy applied to a request, and the answer's placeholders put back.
//!
//! [`apply`] scans the inbound request once (in the client's own format), refuses it when a
//! kind's action is `block`, marks it local-only when one is `local_only`, and for `redact`
//! kinds prepares redacted copies that [`crate::inbound::Inbound::body_for`] sends to non-local
//! providers. [`StreamRestore`] and the `restore_*` functions replace the placeholders in the
//! answer with the original values, streamed too, even when a placeholder is split across chunks.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use triage_core::anthropic::{self as a, Block, Event};
use triage_core::catalog::GuardAction;
use triage_core::guard::{Finding, Guard, Kind, Redaction, Restorer};
use triage_core::openai::{ChatChunk, ChatCompletion, FunctionCallDelta, ToolCallDelta};
use triage_core::translate;

use crate::error::GatewayError;
use crate::inbound::{Inbound, Redacted};
use crate::state::AppState;

/// What the guard found and decided.
#[derive(Debug, Default, Clone)]
pub struct Sensitivity {
    /// Kinds found.
    pub kinds: BTreeSet<Kind>,
    /// Only local providers may serve the request.
    pub local_only: bool,
}

impl Sensitivity {
    /// `email,aws_access_key`: the `x-triage-sensitivity` header and ledger value.
    pub fn names(&self) -> String {
        self.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// Scans `inbound` and applies the policy: the caller's key and team overrides (`[guard.keys.*]`,
/// `[guard.teams.*]`) over the global one, and each kind's confidence threshold
/// (`[guard.min_confidence]`; findings below it are ignored).
///
/// Errors: [`GatewayError::SensitiveBlocked`] when a found kind's action is `block`.
pub fn apply(
    state: &AppState,
    guard: &Guard,
    inbound: &mut Inbound,
    key: Option<(&str, &str)>,
) -> Result<Sensitivity, GatewayError> {
    let policy = state.catalog.guard();
    let keep = |f: &Finding| f.confidence >= policy.min_confidence(f.kind.as_str());
    let mut kinds = BTreeSet::new();
    let found = match &inbound.anthropic {
        Some(native) => guard.scan_request(native),
        None => guard.scan_request(&inbound.openai),
    };
    for (_, f) in &found {
        if keep(f) {
            kinds.insert(f.kind);
        }
    }
    if kinds.is_empty() {
        return Ok(Sensitivity::default());
    }
    let (key_id, team) = (key.map(|k| k.0), key.map(|k| k.1));
    let action = |k: Kind| policy.action_for(k.as_str(), k.is_secret(), key_id, team);
    let names = |pred: &dyn Fn(GuardAction) -> bool| -> String {
        kinds.iter().filter(|k| pred(action(**k))).map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
    };
    if kinds.iter().any(|k| action(*k) == GuardAction::Block) {
        return Err(GatewayError::SensitiveBlocked(names(&|a| a == GuardAction::Block)));
    }
    let local_only = kinds.iter().any(|k| action(*k) == GuardAction::LocalOnly);
    let redact: BTreeSet<Kind> = kinds.iter().copied().filter(|k| action(*k) == GuardAction::Redact).collect();
    if !redact.is_empty() {
        let select = |f: &Finding| redact.contains(&f.kind) && keep(f);
        let redacted = match &inbound.anthropic {
            Some(native) => {
                let mut n = native.clone();
                let map = guard.redact_request_where(&mut n, select);
                Redacted { openai: translate::anthropic_to_openai(&n), anthropic: Some(n), map: Arc::new(map) }
            }
            None => {
                let mut o = inbound.openai.clone();
                let map = guard.redact_request_where(&mut o, select);
                Redacted { openai: o, anthropic: None, map: Arc::new(map) }
            }
        };
        if !redacted.map.is_empty() {
            inbound.redacted = Some(redacted);
        }
    }
    tracing::debug!(kinds = %kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","), local_only, "sensitive content found");
    Ok(Sensitivity { kinds, local_only })
}

fn restore_all(r: &Redaction, s: &str) -> String {
    r.restore(s)
}

/// Restores placeholders inside a JSON text (tool-call arguments), JSON-escaping the values.
fn restore_json(r: &Redaction, s: &str) -> String {
    let mut jr = r.json_restorer();
    let mut out = jr.push(s);
    out.push_str(&jr.finish());
    out
}

fn restore_value(r: &Redaction, v: &mut Value) {
    match v {
        Value::String(s) => *s = restore_all(r, s),
        Value::Array(a) => a.iter_mut().for_each(|x| restore_value(r, x)),
        Value::Object(o) => o.values_mut().for_each(|x| restore_value(r, x)),
        _ => {}
    }
}

/// Restores a whole OpenAI answer.
pub fn restore_openai(c: &mut ChatCompletion, r: &Redaction) {
    for ch in &mut c.choices {
        if let Some(t) = &mut ch.message.content {
            *t = restore_all(r, t);
        }
        for tc in ch.message.tool_calls.iter_mut().flatten() {
            tc.function.arguments = restore_json(r, &tc.function.arguments);
        }
    }
}

/// Restores a whole Anthropic answer.
pub fn restore_anthropic(resp: &mut a::Response, r: &Redaction) {
    for b in &mut resp.content {
        match b {
            Block::Text { text, .. } => *text = restore_all(r, text),
            Block::ToolUse { input, .. } => restore_value(r, input),
            _ => {}
        }
    }
}

/// Restores a streamed answer, chunk by chunk or event by event; holds back only what could be
/// the start of a placeholder, and releases it at the end of its choice or block.
pub struct StreamRestore {
    map: Arc<Redaction>,
    text: HashMap<u32, Restorer>,
    args: HashMap<(u32, u32), Restorer>,
    blocks: HashMap<u32, (Restorer, bool)>,
}

impl StreamRestore {
    /// A restorer for one stream.
    pub fn new(map: Arc<Redaction>) -> Self {
        StreamRestore { map, text: HashMap::new(), args: HashMap::new(), blocks: HashMap::new() }
    }

    /// Restores one OpenAI chunk in place.
    pub fn chunk(&mut self, c: &mut ChatChunk) {
        for ch in &mut c.choices {
            let i = ch.index;
            if let Some(t) = &mut ch.delta.content {
                let r = self.text.entry(i).or_insert_with(|| self.map.restorer());
                *t = r.push(t);
            }
            for tc in ch.delta.tool_calls.iter_mut().flatten() {
                if let Some(args) = tc.function.as_mut().and_then(|f| f.arguments.as_mut()) {
                    let r = self.args.entry((i, tc.index)).or_insert_with(|| self.map.json_restorer());
                    *args = r.push(args);
                }
            }
            if ch.finish_reason.is_some() {
                if let Some(mut r) = self.text.remove(&i) {
                    let rest = r.finish();
                    if !rest.is_empty() {
                        ch.delta.content = Some(ch.delta.content.take().unwrap_or_default() + &rest);
                    }
                }
                let keys: Vec<(u32, u32)> = self.args.keys().filter(|k| k.0 == i).copied().collect();
                for k in keys {
                    if let Some(mut r) = self.args.remove(&k) {
                        let rest = r.finish();
                        if !rest.is_empty() {
                            ch.delta.tool_calls.get_or_insert_with(Vec::new).push(ToolCallDelta {
                                index: k.1,
                                function: Some(FunctionCallDelta { name: None, arguments: Some(rest) }),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
        }
    }

    /// Restores one Anthropic event; a block's held-back text comes out as one more delta
    /// just before its `content_block_stop` (returned first).
    pub fn event(&mut self, e: &mut Event) -> Option<Event> {
        match e {
            Event::ContentBlockDelta { index, delta } => {
                for (key, json) in [("text", false), ("partial_json", true)] {
                    if let Some(Value::String(s)) = delta.get_mut(key) {
                        let (r, _) = self.blocks.entry(*index).or_insert_with(|| {
                            (if json { self.map.json_restorer() } else { self.map.restorer() }, json)
                        });
                        *s = r.push(s);
                    }
                }
                None
            }
            Event::ContentBlockStop { index } => {
                let (mut r, json) = self.blocks.remove(index)?;
                let rest = r.finish();
                if rest.is_empty() {
                    return None;
                }
                let mut delta = serde_json::Map::new();
                let (kind, key) = if json { ("input_json_delta", "partial_json") } else { ("text_delta", "text") };
                delta.insert("type".into(), kind.into());
                delta.insert(key.into(), rest.into());
                Some(Event::ContentBlockDelta { index: *index, delta })
            }
            _ => None,
        }
    }
}
