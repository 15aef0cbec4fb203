#!/usr/bin/env bash
# Memory of an idle gateway and heap allocations per request, ledger and guard on.
#
# 1. Starts the fake upstream and `triage serve` (ledger: sqlite in a temp dir), waits 1 s, and
#    prints the gateway's VmRSS / VmHWM (idle: what it holds before any request).
# 2. Runs the gateway under heaptrack twice: with 1 request, then with $N requests (oha, $RATE
#    req/s, 16 connections, a 2-message chat completion with model "$MODEL"), and prints
#    (calls to allocation functions of run 2 - run 1) / ($N - 1): allocations per request.
#
#   bench/allocs.sh                                 # builds this tree; N=4000, model auto
#   BIN_DIR=/tmp/base/target/release bench/allocs.sh
#
# Needs heaptrack (Debian's package) and oha. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-4000}
RATE=${RATE:-1000}
MODEL=${MODEL:-auto}
UP_PORT=${UP_PORT:-19911}
GW_PORT=${GW_PORT:-19912}
export PATH="$HOME/.cargo/bin:$PATH"
command -v heaptrack >/dev/null || { apt-get update -qq && apt-get install -y -qq heaptrack; } >&2
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p triage -p triage-testkit >&2
  BIN_DIR=target/release
fi

source bench/lib.sh
bench_workdir

fake_catalog "$UP_PORT" "sqlite://$work/triage.db" > "$work/triage.toml"
body="{\"model\":\"$MODEL\",\"max_tokens\":64,\"messages\":[{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"},{\"role\":\"user\",\"content\":\"Summarise the meeting notes in three bullet points.\"}]}"
healthy() { for _ in $(seq 500); do curl -fsS "http://127.0.0.1:$GW_PORT/healthz" >/dev/null 2>&1 && return; sleep 0.02; done; }

"$BIN_DIR/triage-fake-upstream" --listen "127.0.0.1:$UP_PORT" --tcp-nodelay >/dev/null 2>&1 & pids+=($!)

TRIAGE_LOG=warn "$BIN_DIR/triage" serve --config "$work/triage.toml" --listen "127.0.0.1:$GW_PORT" >/dev/null 2>&1 & gw=$!
healthy; sleep 1
echo "idle, 1 s after healthy: $(grep -E 'VmRSS|VmHWM' "/proc/$gw/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
kill -INT "$gw"; wait "$gw" || true

allocs() { # requests -> calls to allocation functions over the whole run
  TRIAGE_LOG=warn heaptrack -o "$work/ht" "$BIN_DIR/triage" serve --config "$work/triage.toml" \
    --listen "127.0.0.1:$GW_PORT" >/dev/null 2>&1 & local ht=$!
  healthy
  oha --no-tui -n "$1" -q "$RATE" -c 16 -m POST -H 'content-type: application/json' -d "$body" \
    "http://127.0.0.1:$GW_PORT/v1/chat/completions" >/dev/null
  sleep 0.5
  kill -INT $(pgrep -P "$ht" -f "triage serve"); wait "$ht" || true
  heaptrack_print -f "$work/ht.zst" --print-peaks 0 --print-allocators 0 --print-temporary 0 --print-leaks 0 2>/dev/null \
    | awk '/calls to allocation functions/ {print $5}'
  rm -f "$work/ht.zst"
}
a1=$(allocs 1); an=$(allocs "$N")
echo "allocation calls per request (model $MODEL, $N requests): $(( (an - a1) / (N - 1) ))"
