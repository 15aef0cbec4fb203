"""The official `anthropic` Python SDK against a running `triage serve`, routed both to an
Anthropic-speaking upstream and to an OpenAI-compatible one; and the `openai` SDK routed to the
Anthropic-speaking upstream. Only the base URL changes."""

import json

import anthropic
import openai
import pytest

TEXT = "Hello from the fake upstream."
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture()
def claude(gateway):
    return anthropic.Anthropic(base_url=gateway.removesuffix("/v1"), api_key="unused-PLACEHOLDER", max_retries=0)


@pytest.fixture()
def oai(gateway):
    return openai.OpenAI(base_url=gateway, api_key="unused-PLACEHOLDER", max_retries=0)


@pytest.mark.parametrize("model", ["fake-claude", "fake-mid"])
def test_message(claude, model):
    raw = claude.messages.with_raw_response.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert raw.headers["x-triage-model"] == model
    msg = raw.parse()
    assert msg.role == "assistant"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 5


@pytest.mark.parametrize("model", ["fake-claude", "fake-mid"])
def test_stream(claude, model):
    with claude.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": "Say hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


@pytest.mark.parametrize("model", ["fake-claude", "fake-mid"])
def test_tool_use_round_trip(claude, model):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = claude.messages.create(model=model, max_tokens=64, messages=messages, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather"
    assert use.input == {}
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C cloudy"}]})
    second = claude.messages.create(model=model, max_tokens=64, messages=messages, tools=[WEATHER])
    assert second.content[0].text == "The tool said: 18C cloudy"


@pytest.mark.parametrize("model", ["fake-claude", "fake-mid"])
def test_streamed_tool_use(claude, model):
    with claude.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER]
    ) as s:
        final = s.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert (use.name, use.input, final.stop_reason) == ("get_weather", {}, "tool_use")


def test_errors_are_anthropic_shaped(claude):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="auto", max_tokens=8, messages=[])
    assert "messages" in str(e.value)


def test_count_tokens(claude):
    r = claude.messages.count_tokens(model="fake-claude", messages=[{"role": "user", "content": "Hello world"}])
    assert r.input_tokens == 8


def test_openai_sdk_routed_to_anthropic(oai):
    c = oai.chat.completions.create(model="fake-claude", messages=[{"role": "user", "content": "Say hello"}])
    assert c.choices[0].message.content == TEXT
    assert c.choices[0].finish_reason == "stop"
    stream = oai.chat.completions.create(
        model="fake-claude", messages=[{"role": "user", "content": "Say hello"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == TEXT
    assert chunks[-1].usage.completion_tokens == 5
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    first = oai.chat.completions.create(model="fake-claude", messages=[{"role": "user", "content": "Weather?"}], tools=[tool])
    call = first.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments), first.choices[0].finish_reason) == ("get_weather", {}, "tool_calls")
    second = oai.chat.completions.create(
        model="fake-claude",
        messages=[
            {"role": "user", "content": "Weather?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18C cloudy"},
        ],
        tools=[tool],
    )
    assert second.choices[0].message.content == "The tool said: 18C cloudy"
