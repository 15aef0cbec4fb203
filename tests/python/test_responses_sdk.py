"""The official `openai` Python SDK's Responses API (`client.responses.create`) against a running
`triage serve`, translated to the fake upstream's Chat Completions and Anthropic Messages: only
the base URL changes (issue 19)."""

import openai
import pytest

TEXT = "Hello from the fake upstream."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway, api_key="unused-PLACEHOLDER", max_retries=0)


@pytest.mark.parametrize("model,served", [("fast", "fake-mid"), ("fake-claude", "fake-claude")])
def test_text_response(client, model, served):
    raw = client.responses.with_raw_response.create(model=model, instructions="Be brief.", input="Say hello")
    assert raw.headers["x-triage-model"] == served
    r = raw.parse()
    assert r.id.startswith("resp_")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output_text == TEXT
    assert r.instructions == "Be brief."
    assert r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


@pytest.mark.parametrize("model", ["fast", "fake-claude"])
def test_streamed_text(client, model):
    events = list(client.responses.create(model=model, input="Say hello", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "response.output_item.added" in types and "response.output_item.done" in types
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == TEXT
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["fast", "fake-claude"])
def test_tool_round_trip(client, model):
    first = client.responses.create(model=model, input="Weather in Bern?", tools=[WEATHER])
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].arguments == "{}"
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "The tool said: sunny"
    # The same conversation sent whole, without the stored response.
    third = client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": "Weather in Bern?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "rainy"},
        ],
        tools=[WEATHER],
        store=False,
    )
    assert third.output_text == "The tool said: rainy"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, previous_response_id=third.id, input="And tomorrow?")
    assert "previous_response_id" in str(e.value)


def test_streamed_tool_call(client):
    events = list(client.responses.create(model="fast", input="Weather?", tools=[WEATHER], stream=True))
    types = [e.type for e in events]
    assert "response.function_call_arguments.done" in types
    final = events[-1].response
    call = [o for o in final.output if o.type == "function_call"][0]
    assert (call.name, call.arguments) == ("get_weather", "{}")


def test_built_in_tool_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="fast", input="Search the web", tools=[{"type": "web_search"}])
    assert "web_search" in str(e.value)
    assert e.value.body["param"] == "tools[0].type"
