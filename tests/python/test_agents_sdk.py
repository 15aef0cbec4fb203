"""The OpenAI Agents SDK (`openai-agents`) on its default model class, the Responses API,
against a running `triage serve` (issue 19): a tool round trip, run whole and streamed."""

import asyncio

import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

# Traces would go to OpenAI; nothing here leaves the machine.
set_tracing_disabled(True)


@function_tool
def get_weather() -> str:
    """Today's weather."""
    return "sunny"


def agent(gateway: str, model: str) -> Agent:
    client = AsyncOpenAI(base_url=gateway, api_key="unused-PLACEHOLDER", max_retries=0)
    return Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        model=OpenAIResponsesModel(model=model, openai_client=client),
        tools=[get_weather],
    )


@pytest.mark.parametrize("model", ["fast", "fake-claude"])
def test_agent_tool_round_trip(gateway, model):
    result = Runner.run_sync(agent(gateway, model), "Weather in Bern?")
    assert result.final_output == "The tool said: sunny"
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]


def test_agent_streamed(gateway):
    async def run():
        streamed = Runner.run_streamed(agent(gateway, "fast"), "Weather in Bern?")
        deltas = []
        async for ev in streamed.stream_events():
            if ev.type == "raw_response_event" and ev.data.type == "response.output_text.delta":
                deltas.append(ev.data.delta)
        return streamed.final_output, "".join(deltas)

    final, text = asyncio.run(run())
    assert final == "The tool said: sunny"
    assert text == final
