#!/usr/bin/env bash
# Production evaluation's cost to the client: the same gateway build, evals off and evals on at a
# 5 % sample, in one run, interleaved (off, on, off, on, ...) so that machine drift hits both.
#
# One fast fake upstream (`triage-fake-upstream`, streaming its fixed answer in $CHUNKS pieces
# $CHUNK_DELAY_MS apart) serves every model. Two `triage serve` processes with the same catalog
# (bench/lib.sh's, plus a `fake-frontier` reference and judge on the same fake, priced so that
# the local answer is the cheaper one) differ only in `[evals] sample_rate` (0 and $SAMPLE).
# bench/stream-client sends $REQUESTS streamed requests ($CONCURRENCY in flight) for model
# `fake-local` to one gateway, then the other, $ROUNDS times, and reports time to first token and
# whole-stream time percentiles. With evals on, every sampled answer costs one reference call
# and two judge calls on the same machine after the client has its answer (the fake's answer
# has no verdict, so they are stored as judge_failed: the work is the same). The evals-on
# gateway's live totals (sampled, stored, skipped) are printed to show the shadow work happened.
#
#   bench/evals.sh                                  # 4 rounds of 2,000 requests, 16 in flight
#   ROUNDS=2 REQUESTS=500 bench/evals.sh
#
# Everything it starts is stopped on exit; all load goes to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-4}
REQUESTS=${REQUESTS:-2000}
CONCURRENCY=${CONCURRENCY:-16}
SAMPLE=${SAMPLE:-0.05}
CHUNKS=${CHUNKS:-20}
CHUNK_DELAY_MS=${CHUNK_DELAY_MS:-10}
UP_PORT=${UP_PORT:-19931}
OFF_PORT=${OFF_PORT:-19932}
ON_PORT=${ON_PORT:-19933}
OUT=${OUT:-bench/results/evals-$(date -u +%Y%m%dT%H%M%SZ).md}

if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p triage -p triage-testkit >&2
  BIN_DIR=target/release
fi
cargo build --release --manifest-path bench/stream-client/Cargo.toml --target-dir bench/target >&2
STREAM_CLIENT=bench/target/release/triage-bench-stream

source bench/lib.sh
bench_workdir

catalog() { # port-of-upstream db sample_rate
  fake_catalog "$1" "$2"
  cat <<TOML
[[models]]
id = "fake-frontier"
provider = "fake"
upstream_model = "fake-upstream-model"
tier = "frontier"
price = { input = 3.0, output = 15.0 }
context_window = 128000
[evals]
sample_rate = $3
reference = "fake-frontier"
judge = "fake-frontier"
max_usd_per_day = 1000.0
TOML
}
catalog "$UP_PORT" "sqlite://$work/off.db" 0 > "$work/off.toml"
catalog "$UP_PORT" "sqlite://$work/on.db" "$SAMPLE" > "$work/on.toml"

"$BIN_DIR/triage-fake-upstream" --listen "127.0.0.1:$UP_PORT" --chunks "$CHUNKS" \
  --chunk-delay-ms "$CHUNK_DELAY_MS" --tcp-nodelay 2>/dev/null & pids+=($!)
TRIAGE_LOG=warn "$BIN_DIR/triage" serve --config "$work/off.toml" --listen "127.0.0.1:$OFF_PORT" & off_pid=$!; pids+=($off_pid)
TRIAGE_LOG=warn "$BIN_DIR/triage" serve --config "$work/on.toml" --listen "127.0.0.1:$ON_PORT" & on_pid=$!; pids+=($on_pid)
for url in "http://127.0.0.1:$UP_PORT/v1/models" "http://127.0.0.1:$OFF_PORT/healthz" "http://127.0.0.1:$ON_PORT/healthz"; do
  for _ in $(seq 100); do curl -fsS "$url" >/dev/null 2>&1 && break; sleep 0.1; done
done
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

rows=()
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    port=$OFF_PORT; pid=$off_pid
    if [ "$mode" = on ]; then port=$ON_PORT; pid=$on_pid; fi
    t0=$(cpu_ticks "$pid")
    json=$("$STREAM_CLIENT" --url "http://127.0.0.1:$port/v1/chat/completions" --model fake-local \
      --requests "$REQUESTS" --concurrency "$CONCURRENCY")
    sleep 1   # let the shadow work of the last sampled answers finish before reading CPU
    t1=$(cpu_ticks "$pid")
    rows+=("$round|$mode|$t0|$t1|$json")
  done
done
live=$(curl -fsS "http://127.0.0.1:$ON_PORT/v1/evals" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["live"]))')

mkdir -p "$(dirname "$OUT")"
python3 - "$(getconf CLK_TCK)" "$live" "${rows[@]}" > "$OUT" <<'PY'
import json, statistics, sys
hz = int(sys.argv[1]); live = json.loads(sys.argv[2]); rows = sys.argv[3:]
print("| round | evals | requests | errors | req/s | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms | gateway CPU s / 1k req |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
agg = {"off": [], "on": []}
for r in rows:
    rnd, mode, t0, t1, js = r.split("|", 4)
    d = json.loads(js)
    cpu = (int(t1) - int(t0)) / hz / max(d["ok"], 1) * 1000
    agg[mode].append((d["ttft_ms"]["p50"], d["ttft_ms"]["p99"], d["total_ms"]["p50"], d["total_ms"]["p99"], cpu))
    print(f"| {rnd} | {mode} | {d['requests']} | {d['errors']} | {d['req_per_s']:.0f} | {d['ttft_ms']['p50']:.3f} | {d['ttft_ms']['p99']:.3f} | {d['total_ms']['p50']:.3f} | {d['total_ms']['p99']:.3f} | {cpu:.3f} |")
print()
print("| evals | median over rounds: TTFT p50 | TTFT p99 | total p50 | total p99 | CPU s / 1k req |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for mode in ("off", "on"):
    cols = list(zip(*agg[mode]))
    print(f"| {mode} | " + " | ".join(f"{statistics.median(c):.3f}" for c in cols) + " |")
print(f"\nevals-on gateway, live totals at the end: {json.dumps(live)}")
PY
cat "$OUT"
