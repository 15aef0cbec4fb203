"""Starts the real `triage serve` in front of the fake upstream (both release binaries) on
loopback ports, for the official SDK client tests. Nothing here reaches the internet."""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


CONFIG = """
tiers = ["local", "mid", "frontier"]

[router]
scorer = "cheapest"

[roles]
search = "local"

[aliases]
fast = "fake-mid"

[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:{up}/v1"
api_key_env = "TRIAGE_TEST_UPSTREAM_KEY"

[providers.fake-anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:{up}/v1"
api_key_env = "TRIAGE_TEST_UPSTREAM_KEY"

[[models]]
id = "fake-local"
provider = "fake"
upstream_model = "fake-local-upstream"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 8192

[[models]]
id = "fake-mid"
provider = "fake"
upstream_model = "fake-mid-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 128000
capabilities = ["tools", "json_schema"]

[[models]]
id = "fake-claude"
provider = "fake-anthropic"
upstream_model = "fake-claude-upstream"
tier = "frontier"
price = {{ input = 3.0, cached_input = 0.3, output = 15.0 }}
context_window = 200000
max_output_tokens = 64000
capabilities = ["tools", "vision"]
"""


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    up_port, gw_port = free_port(), free_port()
    cfg = tmp_path_factory.mktemp("triage") / "triage.toml"
    cfg.write_text(CONFIG.format(up=up_port))
    env = dict(os.environ, TRIAGE_TEST_UPSTREAM_KEY="sk-test-PLACEHOLDER-upstream", TRIAGE_LOG="warn")
    procs = [
        subprocess.Popen([str(TARGET / "triage-fake-upstream"), "--listen", f"127.0.0.1:{up_port}"], env=env),
    ]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        procs.append(
            subprocess.Popen(
                [str(TARGET / "triage"), "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{gw_port}"], env=env
            )
        )
        wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        yield f"http://127.0.0.1:{gw_port}/v1"
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def serve_local(tmp_path_factory, config: str, tools: bool = False):
    """`triage serve` on the tiny random-weight GGUF that `triage-tiny-gguf` writes (with the
    ChatML + tools template when `tools`); `config` is formatted with `model` = its path.
    Yields the gateway's base URL (without /v1) and stops it afterwards."""
    d = tmp_path_factory.mktemp("local")
    model = d / "tiny.gguf"
    subprocess.run([str(TARGET / "triage-tiny-gguf"), str(model)] + (["--tools"] if tools else []), check=True)
    cfg = d / "triage.toml"
    cfg.write_text(config.format(model=model))
    port = free_port()
    env = dict(os.environ, TRIAGE_LOG="warn")
    proc = subprocess.Popen([str(TARGET / "triage"), "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"], env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
