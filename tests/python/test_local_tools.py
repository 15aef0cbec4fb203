"""Tool calling on the local engine through the official SDKs: `triage serve` runs the tiny
random-weight GGUF (written by `triage-tiny-gguf --tools`, ChatML + tools template) in-process,
and `tool_choice` forces a call, so the answer is a real call whatever the random weights say."""

import json

import anthropic
import openai
import pytest

from conftest import serve_local

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": PARAMETERS}}
MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]

CONFIG = """
tiers = ["local"]

[providers.engine]
kind = "local"
model_path = "{model}"
parallel = 1
queue = 4
context = 2048
threads = 1

[[models]]
id = "tiny"
provider = "engine"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 2048
capabilities = ["tools"]
"""


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory):
    yield from serve_local(tmp_path_factory, CONFIG, tools=True)


def check_arguments(args: dict) -> None:
    assert isinstance(args["city"], str) and len(args["city"]) <= 12, args
    assert isinstance(args["days"], int) and 1 <= args["days"] <= 7, args


def test_openai_sdk_gets_a_forced_tool_call(local_gateway):
    client = openai.OpenAI(base_url=local_gateway + "/v1", api_key="unused-PLACEHOLDER", max_retries=0)
    kw = dict(model="tiny", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=400)
    first = client.chat.completions.create(**kw)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    check_arguments(json.loads(call.function.arguments))
    assert first.usage.completion_tokens > 0

    # Streamed, the same call arrives as tool_calls deltas.
    name, args, finish = "", "", None
    for c in client.chat.completions.create(**kw, stream=True):
        if not c.choices:
            continue
        assert not c.choices[0].delta.content
        for tc in c.choices[0].delta.tool_calls or []:
            name += tc.function.name or ""
            args += tc.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert (name, args, finish) == ("get_weather", call.function.arguments, "tool_calls")

    # The call and its result go back in the next turn.
    messages = MESSAGES + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=4)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_anthropic_sdk_gets_a_tool_use_block(local_gateway):
    claude = anthropic.Anthropic(base_url=local_gateway, api_key="unused-PLACEHOLDER", max_retries=0)
    msg = claude.messages.create(
        model="tiny",
        max_tokens=400,
        messages=MESSAGES,
        tools=[{"name": "get_weather", "description": "The weather in a city.", "input_schema": PARAMETERS}],
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    )
    assert msg.stop_reason == "tool_use"
    block = next(b for b in msg.content if b.type == "tool_use")
    assert block.name == "get_weather"
    check_arguments(block.input)
