//! Normalisation of an OpenAI-compatible chunk stream before it reaches an OpenAI client.
//!
//! Upstreams that claim OpenAI compatibility differ in ways that break real clients. The
//! [`ChunkNormalizer`] fixes each of them, chunk by chunk, without buffering content:
//!
//! - the first chunk of every choice carries `delta.role = "assistant"` (C06), later ones do not;
//! - a tool call's `id`, `type` and `function.name` are sent once; an upstream that repeats them
//!   in later fragments (vLLM, C09) has the repeats removed, so accumulating clients do not build
//!   `get_weatherget_weather`; argument fragments are never dropped, even on the finish chunk;
//! - a choice that streamed tool calls and then ends with `finish_reason: "stop"` (Ollama, C11)
//!   ends with `tool_calls`, because agent loops decide whether to run tools from that field;
//! - usage is taken off every chunk (Ollama and xAI attach it to the finish chunk, C05) and kept;
//!   a client that asked for `stream_options.include_usage` gets it in exactly one final chunk
//!   with `choices: []`, and a client that did not ask gets no `choices: []` chunk at all.
//!
//! - tool-call fragments that carry no `index` (they all parse as index 0) are told apart by
//!   their `id`: a fragment whose id differs from the id of the call at its index starts a new
//!   call with the next free index ([`ToolCallIndexer`]).
//!
//! Whether the stream ended cleanly is decided by [`ChunkNormalizer::finished`]: only when a
//! `finish_reason` arrived for every choice that started, or the upstream sent `[DONE]` (C04, C25).

use crate::openai::{ChatChunk, ToolCallDelta, Usage};

/// Gives every streamed tool-call fragment the index of the call it belongs to.
///
/// Some OpenAI-compatible upstreams stream tool calls without `index` (each fragment then parses
/// as index 0), so parallel calls would merge into one (`get_weatherget_time`, arguments run
/// together). A fragment with an `id` other than the one of the current call at its index starts
/// a new call, given its own index (the upstream's if still free, else the next one after the
/// highest given); a fragment without an id continues the current call at its index. Upstreams
/// that send indices (and repeat a call's id on later fragments, vLLM) keep their indices.
#[derive(Debug, Default)]
pub struct ToolCallIndexer {
    /// (choice index, upstream index, call id, index given), in order of first fragment.
    calls: Vec<(u32, u32, Option<String>, u32)>,
}

impl ToolCallIndexer {
    /// The index for `call`, a fragment in choice `choice`.
    pub fn index(&mut self, choice: u32, call: &ToolCallDelta) -> u32 {
        let up = call.index;
        let current = self.calls.iter().rposition(|c| c.0 == choice && c.1 == up);
        let new_call = match (current, &call.id) {
            (None, _) => true,
            (Some(k), Some(id)) => self.calls[k].2.as_ref().is_some_and(|known| known != id),
            (Some(_), None) => false,
        };
        if let (false, Some(k)) = (new_call, current) {
            if self.calls[k].2.is_none() {
                self.calls[k].2.clone_from(&call.id);
            }
            return self.calls[k].3;
        }
        let taken = self.calls.iter().any(|c| c.0 == choice && c.3 == up);
        let given = if taken {
            self.calls.iter().filter(|c| c.0 == choice).map(|c| c.3).max().map_or(0, |m| m + 1)
        } else {
            up
        };
        self.calls.push((choice, up, call.id.clone(), given));
        given
    }

    /// Rewrites the `index` of every tool-call fragment of `chunk`.
    pub fn apply(&mut self, chunk: &mut ChatChunk) {
        for choice in &mut chunk.choices {
            let i = choice.index;
            for call in choice.delta.tool_calls.iter_mut().flatten() {
                call.index = self.index(i, call);
            }
        }
    }
}

/// Per-stream state of the normalisation.
#[derive(Debug, Default)]
pub struct ChunkNormalizer {
    include_usage: bool,
    /// Indices of choices whose role has been sent.
    started: Vec<u32>,
    /// Indices of choices that have streamed a tool call.
    with_tools: Vec<u32>,
    /// (choice, tool-call index) pairs whose metadata has been sent.
    tool_meta_sent: Vec<(u32, u32)>,
    /// Indices of choices that have finished.
    finished: Vec<u32>,
    usage: Option<Usage>,
    /// id, created and model of the last chunk, for the usage chunk.
    last_header: Option<(String, u64, String)>,
    upstream_done: bool,
    indexer: ToolCallIndexer,
}

impl ChunkNormalizer {
    /// A normaliser for a client that did (`include_usage`) or did not ask for the usage chunk.
    pub fn new(include_usage: bool) -> Self {
        ChunkNormalizer { include_usage, ..Default::default() }
    }

    /// Normalises one upstream chunk. Returns `None` when nothing of it goes to the client (a
    /// usage-only or empty chunk).
    pub fn push(&mut self, mut chunk: ChatChunk) -> Option<ChatChunk> {
        self.indexer.apply(&mut chunk);
        if let Some(u) = chunk.usage.take() {
            self.usage = Some(u);
        }
        if chunk.choices.is_empty() {
            if self.last_header.is_none() {
                self.last_header = Some((chunk.id, chunk.created, chunk.model));
            }
            return None;
        }
        for choice in &mut chunk.choices {
            let i = choice.index;
            if self.started.contains(&i) {
                choice.delta.role = None;
            } else {
                self.started.push(i);
                choice.delta.role = Some("assistant".to_owned());
            }
            if let Some(calls) = &mut choice.delta.tool_calls {
                for call in calls.iter_mut() {
                    let key = (i, call.index);
                    if self.tool_meta_sent.contains(&key) {
                        call.id = None;
                        call.kind = None;
                        if let Some(f) = &mut call.function {
                            f.name = None;
                        }
                    } else if call.id.is_some() || call.function.as_ref().is_some_and(|f| f.name.is_some()) {
                        self.tool_meta_sent.push(key);
                    }
                }
                if !calls.is_empty() && !self.with_tools.contains(&i) {
                    self.with_tools.push(i);
                }
            }
            if let Some(reason) = &mut choice.finish_reason {
                if reason == "stop" && self.with_tools.contains(&i) {
                    *reason = "tool_calls".to_owned();
                }
                if !self.finished.contains(&i) {
                    self.finished.push(i);
                }
            }
        }
        self.last_header = Some((chunk.id.clone(), chunk.created, chunk.model.clone()));
        Some(chunk)
    }

    /// Records that the upstream sent `data: [DONE]`.
    pub fn upstream_done(&mut self) {
        self.upstream_done = true;
    }

    /// True when the stream ended cleanly: `[DONE]` arrived, or every started choice finished.
    pub fn finished(&self) -> bool {
        self.upstream_done || (!self.started.is_empty() && self.started.iter().all(|i| self.finished.contains(i)))
    }

    /// The usage seen so far (the upstream's final figures once the stream has ended).
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// True once some choice has started: content has reached (or is about to reach) the client.
    pub fn started(&self) -> bool {
        !self.started.is_empty()
    }

    /// The final usage chunk (`choices: []`), if the client asked for it and usage is known.
    pub fn usage_chunk(&self) -> Option<ChatChunk> {
        if !self.include_usage {
            return None;
        }
        let usage = self.usage.clone()?;
        let (id, created, model) = self.last_header.clone().unwrap_or_default();
        Some(ChatChunk {
            id,
            object: "chat.completion.chunk".to_owned(),
            created,
            model,
            choices: Vec::new(),
            usage: Some(usage),
            extra: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(json: &str) -> ChatChunk {
        serde_json::from_str(json).unwrap()
    }

    fn run(n: &mut ChunkNormalizer, chunks: &[&str]) -> Vec<serde_json::Value> {
        chunks.iter().filter_map(|c| n.push(chunk(c))).map(|c| serde_json::to_value(c).unwrap()).collect()
    }

    #[test]
    fn role_is_added_once_per_choice() {
        let mut n = ChunkNormalizer::new(false);
        let out = run(
            &mut n,
            &[
                r#"{"id":"a","choices":[{"index":0,"delta":{"content":"x"}},{"index":1,"delta":{"content":"y"}}]}"#,
                r#"{"id":"a","choices":[{"index":0,"delta":{"role":"assistant","content":"z"}}]}"#,
            ],
        );
        assert_eq!(out[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(out[0]["choices"][1]["delta"]["role"], "assistant");
        assert!(out[1]["choices"][0]["delta"].get("role").is_none());
    }

    /// Shared case C09: repeated id/name on the last fragment, which also carries finish_reason.
    #[test]
    fn repeated_tool_metadata_is_removed_and_last_fragment_kept() {
        let mut n = ChunkNormalizer::new(false);
        let out = run(
            &mut n,
            &[
                r#"{"id":"c9","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
                r#"{"id":"c9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Par"}}]},"finish_reason":null}]}"#,
                r#"{"id":"c9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":"is\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            ],
        );
        let mut name = String::new();
        let mut args = String::new();
        let mut ids = 0;
        for c in &out {
            let tc = &c["choices"][0]["delta"]["tool_calls"][0];
            name += tc["function"]["name"].as_str().unwrap_or("");
            args += tc["function"]["arguments"].as_str().unwrap_or("");
            ids += usize::from(tc.get("id").is_some());
        }
        assert_eq!((name.as_str(), args.as_str(), ids), ("get_weather", "{\"city\": \"Paris\"}", 1));
        assert_eq!(out[2]["choices"][0]["finish_reason"], "tool_calls");
        assert!(n.finished());
    }

    /// Shared case C11: tool call streamed, then `finish_reason: "stop"`.
    #[test]
    fn stop_after_tool_calls_becomes_tool_calls() {
        let mut n = ChunkNormalizer::new(false);
        let out = run(
            &mut n,
            &[
                r#"{"id":"c11","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"call_PLACEHOLDER","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Lima, Peru\"}"}}]},"finish_reason":null}]}"#,
                r#"{"id":"c11","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}"#,
            ],
        );
        assert_eq!(out[1]["choices"][0]["finish_reason"], "tool_calls");
    }

    /// Shared case C05 A: usage on the finish chunk moves to one final `choices: []` chunk.
    #[test]
    fn usage_moves_to_a_final_chunk_only_when_asked() {
        let chunks = [
            r#"{"id":"c5","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi there!"},"finish_reason":null}]}"#,
            r#"{"id":"c5","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
        ];
        let mut asked = ChunkNormalizer::new(true);
        let out = run(&mut asked, &chunks);
        assert!(out.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(out[1]["choices"][0]["finish_reason"], "stop");
        let last = serde_json::to_value(asked.usage_chunk().unwrap()).unwrap();
        assert_eq!(last["choices"], serde_json::json!([]));
        assert_eq!(last["usage"], serde_json::json!({"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}));
        assert_eq!(last["id"], "c5");

        let mut not_asked = ChunkNormalizer::new(false);
        run(&mut not_asked, &chunks);
        assert!(not_asked.usage_chunk().is_none());
        assert_eq!(not_asked.usage().unwrap().prompt_tokens, 12);
    }

    #[test]
    fn upstream_usage_only_chunk_is_held_back() {
        let mut n = ChunkNormalizer::new(false);
        let out = run(
            &mut n,
            &[
                r#"{"id":"x","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#,
                r#"{"id":"x","choices":[],"usage":{"prompt_tokens":31,"completion_tokens":10,"total_tokens":41}}"#,
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(n.usage().unwrap().completion_tokens, 10);
    }

    /// Accumulates the streamed tool calls of choice 0 by index: (id, name, arguments).
    fn calls_of(out: &[serde_json::Value]) -> Vec<(String, String, String)> {
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for c in out {
            for tc in c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                calls[i].0 += tc["id"].as_str().unwrap_or("");
                calls[i].1 += tc["function"]["name"].as_str().unwrap_or("");
                calls[i].2 += tc["function"]["arguments"].as_str().unwrap_or("");
            }
        }
        calls
    }

    /// Wire-fidelity class: streamed tool calls whose fragments carry no `index` are told apart
    /// by id (two parallel calls, each whole in one chunk, then one split over three).
    #[test]
    fn streamed_tool_calls_without_index_are_told_apart_by_id() {
        let mut n = ChunkNormalizer::new(false);
        let out = run(
            &mut n,
            &[
                r#"{"id":"t","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_A","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Bern\"}"}}]}}]}"#,
                r#"{"id":"t","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_B","type":"function","function":{"name":"get_time","arguments":"{\"zone\":"}}]}}]}"#,
                r#"{"id":"t","choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"\"CET\"}"}}]}}]}"#,
                r#"{"id":"t","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_C","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
            ],
        );
        assert_eq!(
            calls_of(&out),
            vec![
                ("call_A".into(), "get_weather".into(), r#"{"city":"Bern"}"#.into()),
                ("call_B".into(), "get_time".into(), r#"{"zone":"CET"}"#.into()),
                ("call_C".into(), "get_weather".into(), "{}".into()),
            ]
        );
    }

    /// The indexer leaves indexed streams alone, repeated ids (vLLM, C09) included.
    #[test]
    fn indexed_tool_calls_keep_their_index() {
        let mut n = ChunkNormalizer::new(false);
        let out = run(
            &mut n,
            &[
                r#"{"id":"t","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_A","function":{"name":"a","arguments":""}},{"index":1,"id":"call_B","function":{"name":"b","arguments":""}}]}}]}"#,
                r#"{"id":"t","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}},{"index":0,"id":"call_A","function":{"arguments":"[]"}}]}}]}"#,
            ],
        );
        assert_eq!(
            calls_of(&out),
            vec![("call_A".into(), "a".into(), "[]".into()), ("call_B".into(), "b".into(), "{}".into())]
        );
    }

    #[test]
    fn stream_without_finish_is_not_finished() {
        let mut n = ChunkNormalizer::new(false);
        run(&mut n, &[r#"{"id":"x","choices":[{"index":0,"delta":{"content":"Once"}}]}"#]);
        assert!(n.started());
        assert!(!n.finished());
        n.upstream_done();
        assert!(n.finished());
    }
}
