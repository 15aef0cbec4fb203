"""The official `openai` Python SDK against a running `triage serve`: only the base URL changes."""

import json

import openai
import pytest

TEXT = "Hello from the fake upstream."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture()
def client(gateway):
    # The gateway runs with auth disabled; the SDK insists on some key.
    return openai.OpenAI(base_url=gateway, api_key="unused-PLACEHOLDER", max_retries=0)


def test_chat_completion_and_triage_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Say hello"}], extra_headers={"x-request-id": "sdk-PLACEHOLDER-1"}
    )
    assert raw.headers["x-triage-model"] == "fake-local"
    assert raw.headers["x-triage-tier"] == "local"
    assert raw.headers["x-triage-route-reason"] == "auto: cheapest capable tier local, cheapest model fake-local"
    assert raw.headers["x-request-id"] == "sdk-PLACEHOLDER-1"
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "fake-local-upstream"
    assert completion.usage.completion_tokens == 5


def test_streamed_completion(client):
    stream = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Say hello"}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_streamed_completion_with_usage(client):
    stream = client.chat.completions.create(
        model="role:search",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C cloudy"})
    second = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "The tool said: 18C cloudy"


def test_streamed_tool_call(client):
    stream = client.chat.completions.create(
        model="fake-mid", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], stream=True
    )
    name, args, finish = "", "", None
    for c in stream:
        for tc in c.choices[0].delta.tool_calls or []:
            name += tc.function.name or ""
            args += tc.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert (name, json.loads(args), finish) == ("get_weather", {}, "tool_calls")


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    assert "fake-mid" in e.value.message


def test_bad_request_names_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": 42}])
    assert e.value.param == "messages[0].content"


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids[:4] == ["auto", "local", "mid", "frontier"]
    assert "role:search" in ids and "fast" in ids and "fake-mid" in ids
