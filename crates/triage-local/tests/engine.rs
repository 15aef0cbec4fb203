//! The real engine (llama.cpp) on a tiny random-weight GGUF written by the test fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;

use triage_local::{
    Engine, EngineConfig, EngineError, Event, FinishReason, GenerateRequest, Message, Output, Sampling, Tool, ToolCall,
    ToolChoice, ToolFormat, Usage,
};
use triage_testkit::gguf::TinyLlama;

fn model_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| TinyLlama::default().write_temp().expect("write the tiny GGUF")).clone()
}

fn engine(parallel: u32, queue: u32, context: u32) -> Engine {
    Engine::load(EngineConfig { model_path: model_file(), parallel, queue, context, threads: 1, chat_template: None })
        .expect("load")
}

fn messages() -> Vec<Message> {
    vec![Message::new("system", "You are terse."), Message::new("user", "Hello there, what is the answer?")]
}

fn greedy(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        messages: messages(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
        ..GenerateRequest::default()
    }
}

/// `o` as if its prompt had been read from scratch: for comparing answers, whatever the slot's
/// prompt cache held.
fn uncached(mut o: Output) -> Output {
    o.usage.cached_tokens = 0;
    o
}

async fn run(e: &Engine, r: GenerateRequest) -> Output {
    e.generate(r).expect("admitted").collect().await.expect("generated")
}

#[tokio::test]
async fn the_chat_template_comes_from_the_gguf_and_usage_counts_its_tokens() {
    let e = engine(1, 0, 512);
    let prompt = e.render(&messages()).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello there, what is the answer?<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = run(&e, greedy(16)).await;
    assert_eq!(
        out.usage,
        Usage { prompt_tokens: e.count_tokens(&prompt) as u32, completion_tokens: 16, cached_tokens: 0 }
    );
    // BOS, 3 × <|im_start|>, 3 × <|im_end|> and at least one token per word.
    assert!(out.usage.prompt_tokens > 7 + 10, "{:?}", out.usage);
    // The engine's counters saw the same tokens, and time spent on both phases.
    let s = e.stats();
    assert_eq!((s.prompt_tokens, s.generated_tokens), (u64::from(out.usage.prompt_tokens), 16));
    assert!(s.prompt_nanos > 0 && s.generation_nanos > 0, "{s:?}");
    assert_eq!((s.capacity, s.busy), (1, 0));
}

#[tokio::test]
async fn greedy_output_is_the_same_every_time_and_max_tokens_is_exact() {
    let e = engine(1, 0, 512);
    let a = run(&e, greedy(24)).await;
    let b = run(&e, greedy(24)).await;
    // The second time the prompt is in the slot's cache: all of it but the last token is reused,
    // and the answer is the same.
    assert_eq!((a.usage.cached_tokens, b.usage.cached_tokens), (0, b.usage.prompt_tokens - 1));
    assert_eq!(a, uncached(b));
    assert_eq!(a.finish, FinishReason::Length);
    assert_eq!(a.usage.completion_tokens, 24);
    assert!(!a.text.is_empty());
    // A shorter limit gives a prefix of the same answer.
    let short = run(&e, greedy(8)).await;
    assert_eq!(short.usage.completion_tokens, 8);
    assert!(a.text.starts_with(&short.text), "{:?} / {:?}", a.text, short.text);
}

#[tokio::test]
async fn a_seed_makes_sampling_repeatable() {
    let e = engine(1, 0, 512);
    let sampled =
        |seed| GenerateRequest { sampling: Sampling { temperature: 1.0, top_p: 0.9, seed: Some(seed) }, ..greedy(24) };
    let a = run(&e, sampled(7)).await;
    assert_eq!(a, uncached(run(&e, sampled(7)).await));
    assert_eq!(a.usage.completion_tokens, 24);
}

#[tokio::test]
async fn a_stop_sequence_ends_the_text_right_before_it() {
    let e = engine(1, 0, 512);
    let full = run(&e, greedy(48)).await.text;
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() > 8, "{full:?}");
    let (from, to) = (chars[chars.len() / 2].0, chars[chars.len() / 2 + 3].0);
    let stop = full[from..to].to_owned();
    let first = full.find(&stop).unwrap();
    let out = run(&e, GenerateRequest { stop: vec![stop.clone(), "never-there".into()], ..greedy(48) }).await;
    assert_eq!(out.text, full[..first], "stop {stop:?}");
    assert_eq!(out.finish, FinishReason::Stop);
    assert!(out.usage.completion_tokens < 48);
}

#[tokio::test]
async fn streaming_events_come_in_order_and_add_up_to_the_answer() {
    let e = engine(1, 0, 512);
    let whole = run(&e, greedy(20)).await;
    let mut g = e.generate(greedy(20)).unwrap();
    let mut events = Vec::new();
    while let Some(ev) = g.next().await {
        events.push(ev);
    }
    assert_eq!(events.first(), Some(&Event::Started { prompt_tokens: whole.usage.prompt_tokens }));
    let cached = Usage { cached_tokens: whole.usage.prompt_tokens - 1, ..whole.usage };
    assert_eq!(events.last(), Some(&Event::Finished { reason: FinishReason::Length, usage: cached }));
    let text: String = events[1..events.len() - 1]
        .iter()
        .map(|ev| match ev {
            Event::Text(t) => t.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(text, whole.text);
    assert!(events.len() > 3);
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_places_come_back() {
    let e = engine(1, 1, 512);
    let running = e.generate(greedy(400)).unwrap();
    let waiting = e.generate(greedy(400)).unwrap();
    assert!(e.is_busy());
    assert_eq!(e.generate(greedy(4)).unwrap_err(), EngineError::Busy { capacity: 2 });
    drop(running);
    drop(waiting);
    e.until_idle().await;
    assert!(!e.is_busy());
    let s = e.stats();
    assert_eq!((s.in_flight, s.cancelled, s.busy), (0, 2, 1));
    assert_eq!(run(&e, greedy(4)).await.usage.completion_tokens, 4);
}

#[tokio::test]
async fn a_dropped_generation_stops_and_frees_its_slot() {
    let e = engine(1, 0, 512);
    let expected = run(&e, greedy(12)).await;
    let mut g = e.generate(greedy(400)).unwrap();
    assert!(matches!(g.next().await, Some(Event::Started { .. })));
    assert!(matches!(g.next().await, Some(Event::Text(_))));
    assert!(e.is_busy());
    drop(g);
    e.until_idle().await;
    assert_eq!(e.stats().cancelled, 1);
    // The freed sequence is reused: the same prompt gives the same answer.
    assert_eq!(uncached(run(&e, greedy(12)).await), expected);
}

#[tokio::test]
async fn parallel_sequences_each_get_their_own_answer() {
    let e = engine(2, 0, 512);
    let alone = run(&e, greedy(16)).await;
    let other = GenerateRequest { messages: vec![Message::new("user", "Something else entirely.")], ..greedy(16) };
    let other_alone = run(&e, other.clone()).await;
    let (a, b) = tokio::join!(run(&e, greedy(16)), run(&e, other));
    assert_eq!(uncached(a), alone);
    assert_eq!(uncached(b), uncached(other_alone));
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_fails_with_its_size() {
    let e = engine(1, 0, 64);
    let long = GenerateRequest { messages: vec![Message::new("user", "word ".repeat(200))], ..greedy(4) };
    let err = e.generate(long).unwrap().collect().await.unwrap_err();
    assert!(matches!(err, EngineError::ContextExceeded { context: 64, prompt } if prompt > 64), "{err:?}");
    // The slot is free again.
    e.until_idle().await;
    assert_eq!(run(&e, greedy(2)).await.usage.completion_tokens, 2);
}

#[test]
fn a_missing_file_is_a_load_error_naming_it() {
    let err = Engine::load(EngineConfig {
        model_path: "/nonexistent/model.gguf".into(),
        parallel: 1,
        queue: 0,
        context: 64,
        threads: 1,
        chat_template: None,
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "cannot load /nonexistent/model.gguf: no such file");
}

// ---- Tool calling, on the same tiny model with a ChatML + tools template (Hermes style). ----

fn tools_model_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        TinyLlama { chat_template: triage_testkit::gguf::CHATML_TOOLS_TEMPLATE, ..TinyLlama::default() }
            .write_temp()
            .expect("write the tiny GGUF")
    })
    .clone()
}

fn tools_engine() -> Engine {
    Engine::load(EngineConfig {
        model_path: tools_model_file(),
        parallel: 1,
        queue: 0,
        context: 1024,
        threads: 1,
        chat_template: None,
    })
    .expect("load")
}

fn weather_tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "get_weather".into(),
            description: Some("The weather in a city.".into()),
            parameters: serde_json::json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "days"],
            }),
        },
        Tool {
            name: "get_time".into(),
            description: Some("The time in a zone.".into()),
            parameters: serde_json::json!({
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
                "required": ["zone"],
            }),
        },
    ]
}

fn tool_request(choice: ToolChoice) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message::new("user", "What is the weather in Oslo?")],
        max_tokens: Some(160),
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
        tools: weather_tools(),
        tool_choice: choice,
        parallel_tool_calls: false,
        ..GenerateRequest::default()
    }
}

/// The call's arguments parse as a JSON object holding the tool's required properties, with
/// the types and bounds of its schema.
fn assert_valid_call(call: &ToolCall) {
    let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap_or_else(|e| panic!("{call:?}: {e}"));
    match call.name.as_str() {
        "get_weather" => {
            let city = args["city"].as_str().unwrap_or_else(|| panic!("{args}"));
            assert!(city.chars().count() <= 12, "{args}");
            let days = args["days"].as_i64().unwrap_or_else(|| panic!("{args}"));
            assert!((1..=7).contains(&days), "{args}");
        }
        "get_time" => assert!(["UTC", "CET", "PST"].contains(&args["zone"].as_str().unwrap_or("")), "{args}"),
        other => panic!("not a tool: {other}"),
    }
    assert!(call.id.starts_with("call_") && call.id.len() == 29, "{call:?}");
}

#[tokio::test]
async fn required_tool_choice_forces_a_call_that_satisfies_the_schema() {
    let e = tools_engine();
    assert_eq!(e.tool_format(), Ok(ToolFormat::Hermes));
    let prompt = e.render_with_tools(&tool_request(ToolChoice::Auto).messages, &weather_tools()).unwrap();
    assert!(prompt.contains("\"name\": \"get_weather\"") && prompt.contains("<tool_call>"), "{prompt}");
    let out = run(&e, tool_request(ToolChoice::Required)).await;
    assert_eq!(out.finish, FinishReason::ToolCalls, "{out:?}");
    assert_eq!(out.tool_calls.len(), 1, "{out:?}");
    assert_valid_call(&out.tool_calls[0]);
    assert_eq!(out.text, "");
    // Usage: the prompt with the tools, as this model tokenises it; the generated tokens.
    assert_eq!(out.usage.prompt_tokens, e.count_tokens(&prompt) as u32);
    assert!(out.usage.completion_tokens > 10 && out.usage.completion_tokens < 160, "{:?}", out.usage);

    // Streaming: no call text as content, then the calls, then the finish with the same usage.
    let mut g = e.generate(tool_request(ToolChoice::Required)).unwrap();
    let mut events = Vec::new();
    while let Some(ev) = g.next().await {
        events.push(ev);
    }
    assert_eq!(events.first(), Some(&Event::Started { prompt_tokens: out.usage.prompt_tokens }));
    let cached = Usage { cached_tokens: out.usage.prompt_tokens - 1, ..out.usage };
    assert_eq!(events.last(), Some(&Event::Finished { reason: FinishReason::ToolCalls, usage: cached }));
    let Event::ToolCalls(calls) = &events[events.len() - 2] else { panic!("{events:?}") };
    assert_eq!(
        (calls[0].name.as_str(), calls[0].arguments.as_str()),
        (out.tool_calls[0].name.as_str(), out.tool_calls[0].arguments.as_str())
    );
    assert_eq!(events.len(), 3, "no text around a forced call: {events:?}");
}

#[tokio::test]
async fn a_named_function_is_the_one_called() {
    let e = tools_engine();
    for name in ["get_time", "get_weather"] {
        let out = run(&e, tool_request(ToolChoice::Function(name.into()))).await;
        assert_eq!(out.finish, FinishReason::ToolCalls, "{out:?}");
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].name, name);
        assert_valid_call(&out.tool_calls[0]);
    }
    let err = e.generate(tool_request(ToolChoice::Function("nope".into()))).unwrap_err();
    assert_eq!(err, EngineError::Tools("tool_choice names \"nope\", which is not among the tools".into()));
}

#[tokio::test]
async fn auto_and_none_leave_the_choice_to_the_model_or_take_it_away() {
    let e = tools_engine();
    // auto: whatever the model does, the answer is text or well-formed calls, never a half call.
    let out = run(&e, tool_request(ToolChoice::Auto)).await;
    if out.tool_calls.is_empty() {
        assert!(!out.text.contains("<tool_call>"), "{out:?}");
        assert_ne!(out.finish, FinishReason::ToolCalls);
    } else {
        assert_eq!(out.finish, FinishReason::ToolCalls);
        out.tool_calls.iter().for_each(assert_valid_call);
    }
    // none: the tools are not shown, and the answer is text.
    let out = run(&e, tool_request(ToolChoice::None)).await;
    let plain = e.render(&tool_request(ToolChoice::None).messages).unwrap();
    assert_eq!(out.usage.prompt_tokens, e.count_tokens(&plain) as u32);
    assert!(out.tool_calls.is_empty());
}

#[tokio::test]
async fn a_template_without_tools_refuses_a_tool_request_saying_why() {
    let e = engine(1, 0, 512);
    let err = e.tool_format().unwrap_err();
    assert_eq!(err, "its chat template does not show tools to the model");
    let mut req = tool_request(ToolChoice::Auto);
    req.messages = messages();
    assert_eq!(
        e.generate(req.clone()).unwrap_err(),
        EngineError::Tools("this model cannot call tools: its chat template does not show tools to the model".into())
    );
    // tool_choice none needs no tool support: the tools are not shown.
    req.tool_choice = ToolChoice::None;
    assert_eq!(run(&e, GenerateRequest { max_tokens: Some(4), ..req }).await.usage.completion_tokens, 4);
}

#[tokio::test]
async fn a_multi_turn_tool_conversation_goes_through_the_template() {
    let e = tools_engine();
    let mut call = Message::new("assistant", "");
    call.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Oslo","days":2}"#.into(),
    }];
    let mut result = Message::new("tool", "Sunny, 21 C");
    result.tool_call_id = Some("call_1".into());
    let conversation = vec![Message::new("user", "What is the weather in Oslo?"), call, result];
    let prompt = e.render_with_tools(&conversation, &weather_tools()).unwrap();
    assert!(
        prompt.ends_with(
            "<|im_start|>user\nWhat is the weather in Oslo?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}\n</tool_call><|im_end|>\n<|im_start|>tool\n<tool_response>\nSunny, 21 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        ),
        "{prompt}"
    );
    let out =
        run(&e, GenerateRequest { messages: conversation, max_tokens: Some(8), ..tool_request(ToolChoice::Auto) })
            .await;
    assert_eq!(out.usage.prompt_tokens, e.count_tokens(&prompt) as u32);
}

/// ChatML that refuses a system turn, as some templates do (Gemma 2's "System role not
/// supported"); llama.cpp's built-in matcher takes it for ChatML.
const NO_SYSTEM_TEMPLATE: &str = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[tokio::test]
async fn a_conversation_the_jinja_template_refuses_falls_back_to_llama_cpp_without_tools() {
    let path = TinyLlama { chat_template: NO_SYSTEM_TEMPLATE, ..TinyLlama::default() }.write_temp().unwrap();
    let e = Engine::load(EngineConfig {
        model_path: path,
        parallel: 1,
        queue: 0,
        context: 512,
        threads: 1,
        chat_template: None,
    })
    .unwrap();
    // Without a system turn, Jinja renders it; with one, llama.cpp's ChatML does, as before Jinja.
    assert_eq!(
        e.render(&messages()[1..]).unwrap(),
        "<|im_start|>user\nHello there, what is the answer?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        e.render(&messages()).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello there, what is the answer?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(run(&e, greedy(3)).await.usage.completion_tokens, 3);
    // This template shows no tools, and says so before anything is queued.
    assert_eq!(e.tool_format().unwrap_err(), "its chat template does not show tools to the model");
}

/// Llama 3 style: tools listed in the prompt, calls as `{"name": ..., "parameters": ...}`.
const LLAMA3_STYLE_TEMPLATE: &str = r#"{%- if tools is not none %}{{ '<|start_header_id|>system<|end_header_id|>\n\nRespond with {"name": function name, "parameters": dictionary of arguments}. Functions:\n' }}{% for t in tools %}{{ t | tojson(indent=2) + '\n' }}{% endfor %}{{ '<|im_end|>' }}{% endif %}{% for m in messages %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content + '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"#;

/// Mistral style: tools in `[AVAILABLE_TOOLS]`, calls as `[TOOL_CALLS][{...}]`.
const MISTRAL_STYLE_TEMPLATE: &str = r#"{%- if tools is not none %}{{ '[AVAILABLE_TOOLS]' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{% endif %}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST]' + m.content + '[/INST]' }}{% elif m.tool_calls %}{{ '[TOOL_CALLS]' + m.tool_calls | map(attribute='function') | list | tojson + '<|im_end|>' }}{% else %}{{ m.content + '<|im_end|>' }}{% endif %}{% endfor %}"#;

#[tokio::test]
async fn llama3_and_mistral_formats_force_well_formed_calls_too() {
    for (template, format) in
        [(LLAMA3_STYLE_TEMPLATE, ToolFormat::Llama3), (MISTRAL_STYLE_TEMPLATE, ToolFormat::Mistral)]
    {
        let path = TinyLlama { chat_template: template, ..TinyLlama::default() }.write_temp().unwrap();
        let e = Engine::load(EngineConfig {
            model_path: path,
            parallel: 1,
            queue: 0,
            context: 2048,
            threads: 1,
            chat_template: None,
        })
        .unwrap();
        assert_eq!(e.tool_format(), Ok(format));
        for choice in [ToolChoice::Required, ToolChoice::Function("get_weather".into())] {
            let out = run(&e, GenerateRequest { max_tokens: Some(300), ..tool_request(choice.clone()) }).await;
            assert_eq!(out.finish, FinishReason::ToolCalls, "{format:?} {choice:?}: {out:?}");
            assert_eq!(out.tool_calls.len(), 1, "{out:?}");
            let call = &out.tool_calls[0];
            if format == ToolFormat::Mistral {
                assert!(call.id.len() == 9 && call.id.chars().all(|c| c.is_ascii_alphanumeric()), "{call:?}");
            }
            let as_hermes = ToolCall { id: "call_000000000000000000000000".into(), ..call.clone() };
            assert_valid_call(&as_hermes);
            if choice != ToolChoice::Required {
                assert_eq!(call.name, "get_weather");
            }
        }
    }
}

/// The next turn of a conversation reuses the KV cache of the turn before: the earlier prompt is
/// not read again, and the answer is the one a fresh engine gives.
#[tokio::test]
async fn the_next_turn_reuses_the_cached_prompt_and_answers_the_same() {
    let e = engine(2, 0, 512);
    let first = run(&e, greedy(6)).await;
    assert_eq!(first.usage.cached_tokens, 0);
    let mut turn = messages();
    turn.push(Message::new("assistant", first.text.clone()));
    turn.push(Message::new("user", "And then?"));
    let next = GenerateRequest { messages: turn, ..greedy(6) };
    let cached = run(&e, next.clone()).await;
    assert!(
        cached.usage.cached_tokens >= first.usage.prompt_tokens
            && cached.usage.cached_tokens < cached.usage.prompt_tokens,
        "{:?} after {:?}",
        cached.usage,
        first.usage
    );
    // Asked not to, the engine reads the whole prompt again.
    let uncached_run = run(&e, GenerateRequest { cache_prompt: false, ..next.clone() }).await;
    assert_eq!(uncached_run.usage.cached_tokens, 0);
    let fresh = run(&engine(1, 0, 512), next).await;
    assert_eq!(uncached_run, fresh);
    assert_eq!(fresh.usage.cached_tokens, 0);
    assert_eq!(uncached(cached), fresh);
    // An unrelated prompt shares only what every prompt starts with; the other slot, whose
    // cache is empty, or this one: either way the answer is right.
    let other = GenerateRequest { messages: vec![Message::new("user", "Unrelated.")], ..greedy(6) };
    let o = run(&e, other.clone()).await;
    assert!(o.usage.cached_tokens <= 3, "{:?}", o.usage);
    assert_eq!(uncached(o), run(&engine(1, 0, 512), other).await);
}

/// A long prompt is read in chunks between the tokens of a generation already running, rather
/// than stopping it until the whole prompt is read (chunked prefill).
#[tokio::test]
async fn a_long_prompt_is_read_between_the_tokens_of_a_running_generation() {
    let e = engine(2, 0, 2048);
    let long = vec![Message::new("user", "alpha beta gamma delta ".repeat(70))];
    let long_tokens = e.count_tokens(&e.render(&long).unwrap());
    assert!((1000..2000).contains(&long_tokens), "{long_tokens}");
    let mut running = e.generate(greedy(1500)).unwrap();
    assert!(matches!(running.next().await, Some(Event::Started { .. })));
    assert!(matches!(running.next().await, Some(Event::Text(_))));
    // Keep reading the running generation, as a client would.
    let reader = tokio::spawn(async move {
        let mut texts = 0;
        while let Some(ev) = running.next().await {
            if matches!(ev, Event::Text(_)) {
                texts += 1;
            }
        }
        texts
    });
    let before = e.stats().generated_tokens;
    let mut g = e.generate(GenerateRequest { messages: long, ..greedy(1) }).unwrap();
    assert_eq!(g.next().await, Some(Event::Started { prompt_tokens: long_tokens as u32 }));
    let during = e.stats().generated_tokens - before;
    // At most 128 prompt tokens a step while the other sequence generates: one of its tokens
    // per chunk (the long prompt's own first token is counted too).
    let chunks = long_tokens.div_ceil(128) as u64;
    assert!(during >= chunks - 1, "{during} tokens generated while {chunks} chunks were read");
    drop(g);
    reader.abort();
}

// ---- Files without a chat template the engine can run. ----

fn load_with(tiny: TinyLlama, chat_template: Option<&str>) -> Engine {
    let path = tiny.write_temp().unwrap();
    let config = EngineConfig {
        model_path: path,
        parallel: 1,
        queue: 0,
        context: 512,
        threads: 1,
        chat_template: chat_template.map(str::to_owned),
    };
    Engine::load(config).unwrap()
}

#[tokio::test]
async fn a_file_without_a_template_gets_its_familys_and_says_so() {
    // The tiny model is a `llama` with a SentencePiece vocabulary: Llama 2's format.
    let tiny = TinyLlama { chat_template: "", ..TinyLlama::default() };
    let info = triage_local::ModelInfo::read(&tiny.write_temp().unwrap()).unwrap();
    assert_eq!(info.chat_template, None);
    let expected = triage_local::TemplateSource::Family { family: "Llama 2".into(), why: "the file has none".into() };
    assert_eq!(info.template(), Ok(expected.clone()));
    let e = load_with(tiny, None);
    assert_eq!(e.template_source(), &expected);
    assert_eq!(e.template_source().to_string(), "the Llama 2 template (the file has none)");
    // BOS is the tokenizer's to add: the prompt starts at `[INST]`.
    assert_eq!(
        e.render(&messages()).unwrap(),
        "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHello there, what is the answer? [/INST]"
    );
    assert_eq!(run(&e, greedy(5)).await.usage.completion_tokens, 5);
}

#[tokio::test]
async fn a_template_minijinja_cannot_run_is_replaced_by_the_familys() {
    let tiny = TinyLlama { chat_template: "{{ messages[0].content.nosuchmethod() }}", ..TinyLlama::default() };
    let info = triage_local::ModelInfo::read(&tiny.write_temp().unwrap()).unwrap();
    let Ok(triage_local::TemplateSource::Family { family, why }) = info.template() else {
        panic!("{:?}", info.template())
    };
    assert_eq!(family, "Llama 2");
    assert!(why.starts_with("MiniJinja cannot run the file's: "), "{why}");
    let e = load_with(tiny, None);
    assert_eq!(info.template().unwrap(), *e.template_source());
    assert!(e.render(&messages()).unwrap().starts_with("[INST] <<SYS>>\nYou are terse."));
}

/// Gemma's format, given in the provider's config: Gemma has no system role, so the system
/// prompt is folded into the first user turn.
const GEMMA_STYLE_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

#[tokio::test]
async fn a_configured_template_overrides_the_files_and_gemma_style_folds_the_system_prompt() {
    // The file's own (ChatML) is not used.
    let e = load_with(TinyLlama::default(), Some(GEMMA_STYLE_TEMPLATE));
    assert_eq!(e.template_source(), &triage_local::TemplateSource::Configured);
    let mut chat = messages();
    chat.push(Message::new("assistant", "42."));
    chat.push(Message::new("user", "Why?"));
    assert_eq!(
        e.render(&chat).unwrap(),
        "<start_of_turn>user\nYou are terse.\n\nHello there, what is the answer?<end_of_turn>\n\
         <start_of_turn>model\n42.<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(run(&e, greedy(4)).await.usage.completion_tokens, 4);
    // A configured template that cannot be run is a load error naming the setting.
    let path = TinyLlama::default().write_temp().unwrap();
    let err = Engine::load(EngineConfig {
        model_path: path,
        parallel: 1,
        queue: 0,
        context: 512,
        threads: 1,
        chat_template: Some("{{ messages[0].content.nosuchmethod() }}".into()),
    })
    .unwrap_err();
    assert!(
        matches!(&err, EngineError::Template(m) if m.starts_with("the chat_template of the provider's config: ")),
        "{err}"
    );
}

#[test]
fn an_unknown_architecture_without_a_template_is_refused_with_the_fix() {
    let info = triage_local::ModelInfo {
        path: "/models/x.gguf".into(),
        size: 1,
        architecture: "mamba".into(),
        name: None,
        context_length: None,
        chat_template: None,
        tokenizer_model: None,
    };
    let err = info.template().unwrap_err();
    assert!(
        err.starts_with(
            "no usable chat template: the file has none, and Triage knows no template for its architecture \"mamba\""
        ),
        "{err}"
    );
    assert!(
        err.ends_with("set chat_template in the provider's config (inline Jinja, or the path of a file holding it)"),
        "{err}"
    );
    // With a template that MiniJinja cannot run, llama.cpp's matcher may still know it.
    let info = triage_local::ModelInfo { chat_template: Some("{% bad".into()), ..info };
    assert_eq!(info.template(), Ok(triage_local::TemplateSource::FileBuiltin));
}
