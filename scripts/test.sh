#!/usr/bin/env bash
# Runs every test of Triage: Rust unit and integration tests, then the official-SDK client tests.
# One release build serves both (the SDK tests drive the release binaries); it installs what the
# tests need (a Python virtualenv with the pinned SDKs) and starts nothing that outlives it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo build (release)"
cargo build --release --locked --workspace --bins

echo "== cargo test (release profile, reuses the build)"
cargo test --release --locked --workspace

echo "== Python SDK client tests"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
.venv/bin/python -m pytest -q tests/python
