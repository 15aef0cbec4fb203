"""LangChain both ways against a running `triage serve` (issue 19, item 5): `ChatOpenAI` (Chat
Completions, and the Responses API with `use_responses_api=True`) and `ChatAnthropic`
(Messages), each on an OpenAI-compatible upstream (`fast`) and an Anthropic one
(`fake-claude`): a plain answer, a stream, and a tool round trip. Only the base URL changes."""

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

TEXT = "Hello from the fake upstream."
MODELS = ["fast", "fake-claude"]


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return "sunny"


def openai_chat(gateway: str, model: str, responses: bool = False) -> ChatOpenAI:
    return ChatOpenAI(
        model=model, base_url=gateway, api_key="unused-PLACEHOLDER", max_retries=0, use_responses_api=responses
    )


def anthropic_chat(gateway: str, model: str) -> ChatAnthropic:
    # ChatAnthropic's base URL is the server root (the SDK adds /v1/messages).
    return ChatAnthropic(
        model=model,
        base_url=gateway.removesuffix("/v1"),
        api_key="unused-PLACEHOLDER",
        max_retries=0,
        max_tokens=1024,
    )


CLIENTS = {
    "ChatOpenAI": lambda gw, m: openai_chat(gw, m),
    "ChatOpenAI-responses": lambda gw, m: openai_chat(gw, m, responses=True),
    "ChatAnthropic": anthropic_chat,
}


def text_of(msg) -> str:
    """A message's text, whether LangChain gives it as a string or as content blocks."""
    if isinstance(msg.content, str):
        return msg.content
    return "".join(b.get("text", "") for b in msg.content if isinstance(b, dict))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("client", list(CLIENTS))
def test_langchain_invoke_and_stream(gateway, client, model):
    llm = CLIENTS[client](gateway, model)
    assert text_of(llm.invoke("Say hello")) == TEXT
    streamed = "".join(text_of(chunk) for chunk in llm.stream("Say hello"))
    assert streamed == TEXT


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("client", list(CLIENTS))
def test_langchain_tool_round_trip(gateway, client, model):
    llm = CLIENTS[client](gateway, model).bind_tools([get_weather])
    question = HumanMessage("Weather in Bern?")
    first = llm.invoke([question])
    assert [c["name"] for c in first.tool_calls] == ["get_weather"]
    call = first.tool_calls[0]
    result = ToolMessage(content=get_weather.invoke({"city": "Bern"}), tool_call_id=call["id"])
    final = llm.invoke([question, first, result])
    assert final.tool_calls == []
    assert text_of(final) == "The tool said: sunny"
