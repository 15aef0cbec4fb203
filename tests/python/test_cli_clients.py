"""The real agent CLIs from npm (tests/clients/package.json, pinned; `npm ci` there installs them)
run as a user would against the release `triage serve`, with the fake upstream behind it
(issue 19, item 5): Claude Code (`claude -p`, stream-json, a tool round trip, with and without
routing aliases) and the Codex CLI (`codex exec`, the Responses API streamed, a tool call).

The fake upstream calls the tool that a `fake-call <tool> <JSON arguments>` line of the prompt
names, then answers `The tool said: <the tool's result>` (a `fake-text` line: a text answer
although the CLIs offer tools with every request): a pass means the CLI sent its request
through Triage, got the call back in its own wire format, ran the tool, sent the result, and
printed the final answer.

Nothing may reach the internet: telemetry, error reporting and update checks are switched off by
their environment variables and config, and every other address goes to a proxy on a closed
loopback port (only 127.0.0.1 is exempt), so an attempt fails at once instead of leaving the
machine. Each CLI run has a hard timeout."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, TARGET, free_port, wait_http

BIN = ROOT / "tests" / "clients" / "node_modules" / ".bin"
TIMEOUT = 120
SECRET = "the secret word is pelican"

CONFIG = """
tiers = ["local", "mid", "frontier"]

[router]
scorer = "cheapest"

[roles]
search = "mid"

# Claude Code's model names as routing hints (README, "Claude Code").
[aliases]
fast = "fake-mid"
"claude-*haiku*" = "role:search"
"claude-*sonnet*" = "mid"
"claude-*opus*" = "frontier"

# The guard's false alarms on the CLIs' own system prompts (names of products, example paths and
# addresses in the instructions) are not what these tests are about; docs/COMPATIBILITY.md says
# what the default policy does with them.
[guard.kinds]
person = "allow"
address = "allow"
postal_address = "allow"
date = "allow"
organization = "allow"

[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:{up}/v1"
api_key_env = "TRIAGE_TEST_UPSTREAM_KEY"

[providers.fake-anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:{up}/v1"
api_key_env = "TRIAGE_TEST_UPSTREAM_KEY"

[[models]]
id = "fake-mid"
provider = "fake"
upstream_model = "fake-mid-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 400000
max_output_tokens = 64000
capabilities = ["tools", "json_schema"]

[[models]]
id = "fake-claude"
provider = "fake-anthropic"
upstream_model = "fake-claude-upstream"
tier = "frontier"
price = {{ input = 3.0, cached_input = 0.3, output = 15.0 }}
context_window = 400000
max_output_tokens = 64000
capabilities = ["tools", "vision"]
"""

# Every address but loopback goes to this proxy: port 9 (discard) on loopback, closed.
NO_INTERNET = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def cli(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `npm ci` in tests/clients (scripts/test.sh does)")
    return path


@pytest.fixture(scope="module")
def cli_gateway(tmp_path_factory):
    """`triage serve` (release) in front of `triage-fake-upstream`; yields the gateway's base URL
    (without /v1)."""
    up_port, gw_port = free_port(), free_port()
    d = tmp_path_factory.mktemp("cli-gateway")
    cfg = d / "triage.toml"
    cfg.write_text(CONFIG.format(up=up_port))
    env = dict(os.environ, TRIAGE_TEST_UPSTREAM_KEY="sk-test-PLACEHOLDER-upstream", TRIAGE_LOG="warn")
    procs = [subprocess.Popen([str(TARGET / "triage-fake-upstream"), "--listen", f"127.0.0.1:{up_port}"], env=env)]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        procs.append(
            subprocess.Popen(
                [str(TARGET / "triage"), "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{gw_port}"],
                env=env,
                cwd=d,
            )
        )
        wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        yield f"http://127.0.0.1:{gw_port}"
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture()
def workdir(tmp_path):
    """A working directory with the note the tools read, and a home of the CLI's own."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "note.txt").write_text(SECRET + "\n")
    home = tmp_path / "home"
    home.mkdir()
    return work, home


def base_env(home: Path) -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        **NO_INTERNET,
    }


def run(cmd: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [str(c) for c in cmd],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd[0]} did not finish in {TIMEOUT} s; stdout: {e.stdout!r:.2000} stderr: {e.stderr!r:.2000}")


# --- Claude Code -------------------------------------------------------------------------------


def claude(gateway: str, home: Path, work: Path, model: str, prompt: str, *extra: str):
    env = base_env(home)
    env.update(
        {
            "ANTHROPIC_BASE_URL": gateway,
            "ANTHROPIC_API_KEY": "sk-ant-PLACEHOLDER-unused",
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_BUG_COMMAND": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
    )
    out = run(
        [cli("claude"), "-p", prompt, "--model", model, "--output-format", "stream-json", "--verbose", *extra],
        env,
        work,
    )
    events = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    assert events, f"no stream-json events; rc {out.returncode}; stderr: {out.stderr[-2000:]}"
    return out, events


def claude_result(out, events) -> dict:
    results = [e for e in events if e.get("type") == "result"]
    assert len(results) == 1, f"rc {out.returncode}; events: {json.dumps(events)[-3000:]}; stderr: {out.stderr[-2000:]}"
    r = results[0]
    assert r["is_error"] is False, f"{r.get('result')!r}; stderr: {out.stderr[-2000:]}"
    assert out.returncode == 0
    return r


def assistant_blocks(events) -> list:
    return [b for e in events if e.get("type") == "assistant" for b in e["message"]["content"]]


def assistant_models(events) -> set:
    return {e["message"]["model"] for e in events if e.get("type") == "assistant"}


@pytest.mark.parametrize(
    "model,upstream",
    [
        # Claude Code's own model names through the aliases: sonnet -> tier mid (an OpenAI-compatible
        # upstream, translated), opus -> tier frontier (an Anthropic upstream).
        ("claude-sonnet-4-6", "fake-mid-upstream"),
        ("claude-opus-4-1", "fake-claude-upstream"),
        # No alias: a model id of the catalog.
        ("fake-claude", "fake-claude-upstream"),
    ],
)
def test_claude_code_text(cli_gateway, workdir, model, upstream):
    work, home = workdir
    out, events = claude(cli_gateway, home, work, model, "Say hello\nfake-text")
    r = claude_result(out, events)
    assert r["result"] == "Hello from the fake upstream."
    assert assistant_models(events) == {upstream}


@pytest.mark.parametrize(
    "model,upstream", [("claude-sonnet-4-6", "fake-mid-upstream"), ("fake-claude", "fake-claude-upstream")]
)
@pytest.mark.parametrize("tool", ["Read", "Bash"])
def test_claude_code_tool_round_trip(cli_gateway, workdir, model, upstream, tool):
    work, home = workdir
    note = work / "note.txt"
    args = {"file_path": str(note)} if tool == "Read" else {"command": f"cat {note}", "description": "Show the note"}
    prompt = f"What does the note say?\nfake-call {tool} {json.dumps(args)}"
    allowed = "Read" if tool == "Read" else "Bash(cat:*)"
    out, events = claude(cli_gateway, home, work, model, prompt, "--allowedTools", allowed)
    r = claude_result(out, events)
    uses = [b for b in assistant_blocks(events) if b.get("type") == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [(tool, args)]
    results = [
        b for e in events if e.get("type") == "user" for b in e["message"]["content"] if b.get("type") == "tool_result"
    ]
    assert len(results) == 1 and results[0]["tool_use_id"] == uses[0]["id"]
    assert not results[0].get("is_error"), results[0]
    # The final answer quotes the tool's result, which the CLI read from the file.
    assert r["result"].startswith("The tool said: ")
    assert SECRET in r["result"]
    assert r["num_turns"] == 2
    assert assistant_models(events) == {upstream}


# --- Codex CLI ---------------------------------------------------------------------------------


def codex(gateway: str, home: Path, work: Path, model: str, prompt: str):
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        f"""
model = "{model}"
model_provider = "triage"
check_for_update_on_startup = false

[model_providers.triage]
name = "Triage"
base_url = "{gateway}/v1"
env_key = "TRIAGE_API_KEY"
wire_api = "responses"

[analytics]
enabled = false

[feedback]
enabled = false
"""
    )
    env = base_env(home)
    env.update({"CODEX_HOME": str(codex_home), "TRIAGE_API_KEY": "tr-PLACEHOLDER-unused"})
    out = run(
        [
            cli("codex"),
            "exec",
            "--json",
            "--skip-git-repo-check",
            # The fake decides which command runs (cat of the note): no sandbox is needed, and
            # the sandbox's helpers are not on every CI machine.
            "--dangerously-bypass-approvals-and-sandbox",
            prompt,
        ],
        env,
        work,
    )
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]
    assert events, f"no JSON events; rc {out.returncode}; stderr: {out.stderr[-3000:]}"
    errors = [e for e in events if e.get("type") in ("error", "turn.failed")]
    assert not errors, f"{errors}; stderr: {out.stderr[-2000:]}"
    assert out.returncode == 0, out.stderr[-2000:]
    return events


def codex_items(events, kind: str) -> list:
    return [e["item"] for e in events if e.get("type") == "item.completed" and e["item"].get("type") == kind]


@pytest.mark.parametrize("model", ["fast", "fake-claude"])
def test_codex_exec_text(cli_gateway, workdir, model):
    work, home = workdir
    events = codex(cli_gateway, home, work, model, "Say hello\nfake-text")
    messages = codex_items(events, "agent_message")
    assert [m["text"] for m in messages] == ["Hello from the fake upstream."]
    assert any(e.get("type") == "turn.completed" for e in events)


@pytest.mark.parametrize("model", ["fast", "fake-claude"])
def test_codex_exec_tool_call(cli_gateway, workdir, model):
    work, home = workdir
    prompt = 'What does the note say?\nfake-call exec_command {"cmd": "cat note.txt"}'
    events = codex(cli_gateway, home, work, model, prompt)
    commands = codex_items(events, "command_execution")
    assert len(commands) == 1, events
    assert "cat note.txt" in commands[0]["command"]
    assert SECRET in commands[0]["aggregated_output"]
    messages = codex_items(events, "agent_message")
    assert len(messages) == 1
    assert messages[0]["text"].startswith("The tool said: ")
    assert SECRET in messages[0]["text"]
