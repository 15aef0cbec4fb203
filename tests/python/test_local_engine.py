"""The official `openai` and `anthropic` SDKs against `triage serve` running a GGUF in-process.

The model is the tiny random-weight llama that `triage-tiny-gguf` writes (no download): its
answers are nonsense, but greedy decoding makes them repeatable, so a streamed answer must equal
the whole one, and token counts are exact.
"""


import anthropic
import openai
import pytest

from conftest import serve_local

CONFIG = """
tiers = ["local", "mid", "frontier"]

[spend]
database = ""

[providers.engine]
kind = "local"
model_path = "{model}"
parallel = 2
queue = 4
context = 512
threads = 1

[[models]]
id = "tiny"
provider = "engine"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 512
"""

QUESTION = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory):
    yield from serve_local(tmp_path_factory, CONFIG, tools=False)


@pytest.fixture()
def oai(local_gateway):
    return openai.OpenAI(base_url=f"{local_gateway}/v1", api_key="unused-PLACEHOLDER", max_retries=0)


def test_greedy_answer_is_repeatable_with_exact_usage(oai):
    first = oai.chat.completions.create(model="local", messages=QUESTION, max_tokens=8, temperature=0)
    again = oai.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8, temperature=0)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].finish_reason == "length"
    assert first.usage.completion_tokens == 8
    assert first.usage.prompt_tokens == again.usage.prompt_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + 8
    # The second time, the prompt (all but its last token) comes from the engine's prompt cache.
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_stream_adds_up_to_the_whole_answer(oai):
    whole = oai.chat.completions.create(model="local", messages=QUESTION, max_tokens=10, temperature=0)
    stream = oai.chat.completions.create(
        model="local",
        messages=QUESTION,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_stop_sequence_cuts_the_answer_before_it(oai):
    whole = oai.chat.completions.create(model="local", messages=QUESTION, max_tokens=12, temperature=0).choices[0]
    text = whole.message.content
    # Stop on a piece of the greedy answer (two printable ASCII characters, after its start): the
    # answer ends right before the piece's first occurrence.
    pieces = [text[i : i + 2] for i in range(1, len(text) - 1)]
    usable = [p for p in pieces if all(c.isascii() and c.isprintable() and not c.isspace() for c in p)]
    assert usable, f"no usable piece in {text!r}"
    piece = usable[len(usable) // 2]
    cut = oai.chat.completions.create(model="local", messages=QUESTION, max_tokens=12, temperature=0, stop=[piece])
    assert cut.choices[0].message.content == text[: text.index(piece)]
    assert cut.choices[0].finish_reason == "stop"


def test_anthropic_sdk_gets_the_same_answer(oai, local_gateway):
    whole = oai.chat.completions.create(model="local", messages=QUESTION, max_tokens=8, temperature=0)
    client = anthropic.Anthropic(base_url=local_gateway, api_key="unused-PLACEHOLDER", max_retries=0)
    # This SDK version no longer takes `temperature` as an argument; the wire field still exists.
    msg = client.messages.create(model="local", max_tokens=8, messages=QUESTION, extra_body={"temperature": 0})
    assert msg.content[0].type == "text"
    assert msg.content[0].text == whole.choices[0].message.content
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 8
    # The prompt was read before (the OpenAI call above), so the engine's prompt cache holds all
    # of it but its last token; Anthropic counts cache reads apart from the input tokens.
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == whole.usage.prompt_tokens
    assert msg.usage.cache_read_input_tokens == whole.usage.prompt_tokens - 1
