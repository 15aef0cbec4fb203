#!/usr/bin/env bash
# Load benchmark: added latency of the gateway over calling the fake upstream directly.
#
# Starts the fast fake upstream and `triage serve` (release builds) on loopback, drives each
# scenario with oha at fixed request rates (open loop: -q with --latency-correction, so a slow
# answer does not slow the arrivals), records latency percentiles, the gateway's CPU seconds per
# 1,000 requests and its peak RSS, stops everything it started, and prints a Markdown table.
#
#   bench/run.sh                      # rates 1000, 30 s each
#   RATES="100 1000 5000" DURATION=10s bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-1000}
DURATION=${DURATION:-30s}
CONNECTIONS=${CONNECTIONS:-64}
UP_PORT=${UP_PORT:-19901}
GW_PORT=${GW_PORT:-19902}
OUT=${OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ).md}

command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
cargo build --release --locked -p triage -p triage-testkit >&2

source bench/lib.sh
bench_workdir

fake_catalog "$UP_PORT" "sqlite://$work/triage.db" > "$work/triage.toml"

./target/release/triage-fake-upstream --listen "127.0.0.1:$UP_PORT" 2>/dev/null & pids+=($!)
TRIAGE_LOG=warn ./target/release/triage serve --config "$work/triage.toml" --listen "127.0.0.1:$GW_PORT" & gw_pid=$!; pids+=($gw_pid)
for url in "http://127.0.0.1:$UP_PORT/v1/models" "http://127.0.0.1:$GW_PORT/healthz"; do
  for _ in $(seq 100); do curl -fsS "$url" >/dev/null 2>&1 && break; sleep 0.1; done
done

body() { printf '{"model":"%s","max_tokens":64,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the meeting notes in three bullet points."}]}' "$1"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$gw_pid/stat"; }

rows=()
run() { # scenario url model rate
  local scenario=$1 url=$2 model=$3 rate=$4 t0 t1
  t0=$(cpu_ticks)
  oha --no-tui -z "$DURATION" -q "$rate" -c "$CONNECTIONS" --latency-correction -m POST \
      -H 'content-type: application/json' -d "$(body "$model")" --output-format json "$url" > "$work/oha.json"
  t1=$(cpu_ticks)
  rows+=("$(python3 - "$work/oha.json" "$scenario" "$rate" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
path, scenario, rate, t0, t1, hz = sys.argv[1:]
d = json.load(open(path))
s, p = d["summary"], d["latencyPercentiles"]
ok = sum(v for k, v in d.get("statusCodeDistribution", {}).items() if k.startswith("2"))
# Requests still in flight when the run's duration ends are aborted by oha; they are not errors.
errors = sum(v for k, v in d.get("statusCodeDistribution", {}).items() if not k.startswith("2"))
errors += sum(v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline")
ms = lambda k: p[k] * 1000
cpu = (int(t1) - int(t0)) / int(hz)
cpu_per_k = "-" if scenario == "direct" else f"{cpu / max(ok, 1) * 1000:.3f}"
print(f"{scenario}|{rate}|{s['requestsPerSec']:.0f}|{errors}|{ms('p50'):.3f}|{ms('p90'):.3f}|{ms('p99'):.3f}|{ms('p99.9'):.3f}|{cpu_per_k}")
PY
)")
}

for rate in $RATES; do
  run direct "http://127.0.0.1:$UP_PORT/v1/chat/completions" fake-upstream-model "$rate"
  run triage-fixed "http://127.0.0.1:$GW_PORT/v1/chat/completions" fake-local "$rate"
  run triage-auto "http://127.0.0.1:$GW_PORT/v1/chat/completions" auto "$rate"
done
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$gw_pid/status")

mkdir -p "$(dirname "$OUT")"
python3 - "$rss_kb" "${rows[@]}" > "$OUT" <<'PY'
import sys
rss = int(sys.argv[1]); rows = [r.split("|") for r in sys.argv[2:]]
direct = {r[1]: r for r in rows if r[0] == "direct"}
print("| scenario | rate (req/s) | achieved (req/s) | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | gateway CPU s / 1k req |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    d = direct[r[1]]
    add = lambda i: "-" if r[0] == "direct" else f"{float(r[i]) - float(d[i]):.3f}"
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]} | {add(4)} | {add(6)} | {r[8]} |")
print(f"\nGateway peak RSS over the run: {rss / 1024:.1f} MiB")
PY
cat "$OUT"
