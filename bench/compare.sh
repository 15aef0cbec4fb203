#!/usr/bin/env bash
# Triage against LiteLLM: every scenario against the same fast fake upstream, in one run.
#
# Scenarios (all on loopback, all through the same `triage-fake-upstream` process):
#   direct        oha -> fake upstream (the floor)
#   triage-fixed  oha -> `triage serve`, model "fake-local" (ledger on: sqlite in a temp dir;
#                 guard on: the default local_only policy)
#   triage-auto   the same gateway, model "auto" (lexical difficulty router + guard + ledger)
#   litellm       oha -> LiteLLM proxy (`litellm --config cfg.yaml --num_workers $LITELLM_WORKERS`,
#                 no database, set_verbose false, LITELLM_LOG=ERROR), model
#                 "openai/fake-upstream-model" with api_base = the fake's /v1
#
# Non-streamed: oha open loop (-q RATE --latency-correction, $CONNECTIONS connections) for
# $DURATION at each of $RATES, plus a "max" point per scenario: a closed-loop probe (no -q,
# $PROBE long) finds the scenario's throughput M, then open-loop runs at 0.9, 0.75, 0.6 x M
# until one is sustained (achieved >= 97 % of offered, no errors, p99 < $SLO_P99_MS ms).
# Streamed: bench/stream-client (Rust) sends $STREAM_REQUESTS streamed requests at
# $STREAM_CONCURRENCY in flight and reports time to first token and inter-token gaps; the fake
# streams the fixed answer in up to $CHUNKS pieces (15 for its 29-byte text at the default 20)
# with $CHUNK_DELAY_MS between events.
# Per scenario and point: achieved rate, errors, p50/p90/p99/p99.9, added latency over direct at
# the same rate, CPU seconds per 1,000 requests (utime+stime from /proc/PID/stat, summed over the
# gateway's whole process tree: for LiteLLM the uvicorn parent and its worker processes), peak
# RSS (VmHWM, summed over the tree) and start-up time (spawn to first healthy response, and to
# the first 200 chat completion).
#
#   bench/compare.sh                                    # everything, 10 s per point
#   SCENARIOS="direct triage-fixed" RATES="1000" bench/compare.sh
#   PROFILE=1 bench/compare.sh                          # also perf-profile Triage at its max
#   BIN_DIR=/tmp/head/target/release bench/compare.sh   # use prebuilt binaries, build nothing
#   TRIAGE_LEDGER=0 bench/compare.sh                    # Triage without the ledger (A/B)
#
# Writes $OUT (Markdown tables; default bench/results/compare-STAMP.md), the raw rows next to it
# (.jsonl) and, with PROFILE=1, the perf data and self-time reports (-perf.data, -perf-*.txt).
#
# Everything it starts is stopped on exit; all load goes to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"100 500 1000 2000 5000"}
DURATION=${DURATION:-10s}
PROBE=${PROBE:-5s}
MAX=${MAX:-1}
CONNECTIONS=${CONNECTIONS:-64}
SCENARIOS=${SCENARIOS:-"direct triage-fixed triage-auto litellm"}
STREAM=${STREAM:-1}
STREAM_REQUESTS=${STREAM_REQUESTS:-400}
STREAM_CONCURRENCY=${STREAM_CONCURRENCY:-16}
CHUNKS=${CHUNKS:-20}
CHUNK_DELAY_MS=${CHUNK_DELAY_MS:-10}
LITELLM_WORKERS=${LITELLM_WORKERS:-2}
# The fake sets TCP_NODELAY (as production servers do) unless FAKE_NODELAY=0; without it the
# first streamed event waits ~40 ms for a delayed ACK, in every scenario alike.
FAKE_NODELAY=${FAKE_NODELAY:-1}
PROFILE=${PROFILE:-0}
TRIAGE_LEDGER=${TRIAGE_LEDGER:-1}   # 0: [spend] database = "" (no ledger), for an A/B
MAX_FRACTIONS=${MAX_FRACTIONS:-"0.9 0.75 0.6"}
SLO_P99_MS=${SLO_P99_MS:-100}
UP_PORT=${UP_PORT:-19901}
GW_PORT=${GW_PORT:-19902}
LL_PORT=${LL_PORT:-19903}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-bench/results/compare-$STAMP.md}
VENV=bench/.venv-litellm

export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
# BIN_DIR: take triage and triage-fake-upstream from there instead of building this tree (e.g. a
# build of a clean `git archive HEAD` while the working tree is being edited).
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p triage -p triage-testkit >&2
  BIN_DIR=target/release
fi
cargo build --release --manifest-path bench/stream-client/Cargo.toml --target-dir bench/target >&2
STREAM_CLIENT=bench/target/release/triage-bench-stream
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
if want litellm && [ ! -x "$VENV/bin/litellm" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q 'litellm[proxy]' >&2
fi

work=$(mktemp -d)
pids=()
tree() { # a pid and all its descendants
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null || true); do tree "$c"; done
}
cleanup() {
  local p all=()
  for p in "${pids[@]}"; do all+=($(tree "$p")); done
  for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for p in "${all[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
# Starts a command in the background; waits (bounded, 120 s) for $health, then for one 200 chat
# completion; records the pid and both start-up times.
start() { # name health_url completion_url model cmd...
  local name=$1 health=$2 url=$3 model=$4 t0 t1 t2 pid; shift 4
  t0=$(now)
  "$@" > "$work/$name.log" 2>&1 & pid=$!; pids+=($pid)
  for _ in $(seq 1200); do
    curl -fsS -m 1 "$health" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/$name.log" >&2; echo "$name exited" >&2; exit 1; }
    sleep 0.1
  done
  t1=$(now)
  for _ in $(seq 1200); do
    curl -fsS -m 5 "$url" -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d "$(body "$model" false)" >/dev/null 2>&1 && break
    sleep 0.1
  done
  t2=$(now)
  echo "$pid"
  python3 -c "import sys; t0,t1,t2=map(float,sys.argv[1:]); print(f'{t1-t0:.3f} {t2-t0:.3f}')" "$t0" "$t1" "$t2" > "$work/$name.startup"
}
body() { printf '{"model":"%s","max_tokens":64,"stream":%s,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the meeting notes in three bullet points."}]}' "$1" "$2"; }
ticks() { # utime+stime of a whole process tree, in clock ticks
  local root=$1 sum=0 p t
  for p in $(tree "$root"); do
    t=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0); sum=$((sum + t))
  done
  echo $sum
}
hwm_kb() { # sum of VmHWM over a process tree
  local root=$1 sum=0 p t
  for p in $(tree "$root"); do
    t=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0); sum=$((sum + ${t:-0}))
  done
  echo $sum
}

KEY=sk-bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
HZ=$(getconf CLK_TCK)

source bench/lib.sh
fake_catalog "$UP_PORT" "$([ "$TRIAGE_LEDGER" = 1 ] && echo "sqlite://$work/triage.db")" > "$work/triage.toml"

cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: fake-upstream-model
    litellm_params:
      model: openai/fake-upstream-model
      api_base: http://127.0.0.1:$UP_PORT/v1
      api_key: fake-key
litellm_settings:
  set_verbose: false
  telemetry: false
  request_timeout: 600
YAML

declare -A URL MODEL ROOT
URL[direct]="http://127.0.0.1:$UP_PORT/v1/chat/completions"; MODEL[direct]=fake-upstream-model
URL[triage-fixed]="http://127.0.0.1:$GW_PORT/v1/chat/completions"; MODEL[triage-fixed]=fake-local
URL[triage-auto]="http://127.0.0.1:$GW_PORT/v1/chat/completions"; MODEL[triage-auto]=auto
URL[litellm]="http://127.0.0.1:$LL_PORT/v1/chat/completions"; MODEL[litellm]=fake-upstream-model

ROOT[direct]=$(start fake "http://127.0.0.1:$UP_PORT/v1/models" "${URL[direct]}" fake-upstream-model \
  "$BIN_DIR/triage-fake-upstream" --listen "127.0.0.1:$UP_PORT" --chunks "$CHUNKS" --chunk-delay-ms "$CHUNK_DELAY_MS" \
  $([ "$FAKE_NODELAY" = 1 ] && echo --tcp-nodelay))
if want triage-fixed || want triage-auto; then
  ROOT[triage-fixed]=$(TRIAGE_LOG=warn start triage "http://127.0.0.1:$GW_PORT/healthz" "${URL[triage-fixed]}" fake-local \
    "$BIN_DIR/triage" serve --config "$work/triage.toml" --listen "127.0.0.1:$GW_PORT")
  ROOT[triage-auto]=${ROOT[triage-fixed]}
fi
if want litellm; then
  ROOT[litellm]=$(LITELLM_MASTER_KEY=$KEY LITELLM_LOG=ERROR LITELLM_MODE=PRODUCTION start litellm \
    "http://127.0.0.1:$LL_PORT/health/liveliness" "${URL[litellm]}" fake-upstream-model \
    "$VENV/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$LL_PORT" --num_workers "$LITELLM_WORKERS")
fi
# `start` ran in a subshell: re-collect the pids for cleanup.
pids=(); for s in direct triage-fixed litellm; do [ -n "${ROOT[$s]:-}" ] && pids+=(${ROOT[$s]}); done

rows="$work/rows.jsonl"; : > "$rows"
oha_run() { # scenario label rate(-q, or "" for closed loop) duration
  local s=$1 label=$2 rate=$3 dur=$4 t0 t1 q=()
  [ -n "$rate" ] && q=(-q "$rate" --latency-correction)
  t0=$(ticks "${ROOT[$s]}")
  oha --no-tui -z "$dur" "${q[@]}" -c "$CONNECTIONS" -m POST -H "authorization: Bearer $KEY" \
      -H 'content-type: application/json' -d "$(body "${MODEL[$s]}" false)" --output-format json "${URL[$s]}" > "$work/oha.json"
  t1=$(ticks "${ROOT[$s]}")
  python3 - "$work/oha.json" "$s" "$label" "${rate:-closed}" "$t0" "$t1" "$HZ" >> "$rows" <<'PY'
import json, sys
path, s, label, rate, t0, t1, hz = sys.argv[1:]
d = json.load(open(path)); p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
# Requests still in flight when the run's duration ends are aborted by oha; not errors.
err = sum(v for k, v in codes.items() if not k.startswith("2"))
err += sum(v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline")
ms = lambda k: (p.get(k) or 0) * 1000
cpu = (int(t1) - int(t0)) / int(hz)
print(json.dumps({"kind": "plain", "scenario": s, "label": label, "rate": rate, "achieved": d["summary"]["requestsPerSec"],
  "ok": ok, "errors": err, "p50": ms("p50"), "p90": ms("p90"), "p99": ms("p99"), "p99.9": ms("p99.9"),
  "cpu_s": cpu, "cpu_per_k": cpu / max(ok, 1) * 1000}))
PY
  # Let an overloaded gateway drain what oha left in flight before the next point.
  if [ "$s" = litellm ]; then sleep 3; else sleep 1; fi
}

for rate in $RATES; do
  for s in $SCENARIOS; do echo "== $s @ $rate req/s" >&2; oha_run "$s" "$rate" "$rate" "$DURATION"; done
done
for s in $SCENARIOS; do # peak RSS so far: after the fixed rates, before the max search
  echo "{\"kind\": \"rss-rates\", \"scenario\": \"$s\", \"hwm_kb\": $(hwm_kb "${ROOT[$s]}")}" >> "$rows"
done
if [ "$MAX" = 1 ]; then
  for s in $SCENARIOS; do
    echo "== $s: closed-loop probe" >&2
    oha_run "$s" probe "" "$PROBE"
    m=$(tail -1 "$rows" | python3 -c "import json,sys; print(json.load(sys.stdin)['achieved'])")
    # Step down from 0.9 x the probe until a run is sustained: achieved >= 97 % of offered, no
    # errors, p99 under $SLO_P99_MS. Every attempt is kept in the .jsonl; the table shows the
    # first sustained one (or the last attempt, marked, if none was).
    for frac in $MAX_FRACTIONS; do
      q=$(python3 -c "print(max(1, int($m * $frac)))")
      echo "== $s @ max attempt $q req/s ($frac x probe)" >&2
      if [ "$PROFILE" = 1 ] && [ "$s" = triage-auto ] && [ -z "${profiled:-}" ] && command -v perf >/dev/null; then
        perf record -e cpu-clock -F 999 -p "${ROOT[$s]}" -o "$work/perf.data" -- sleep 8 >/dev/null 2>&1 &
        perf_pid=$!
      fi
      oha_run "$s" "max-try" "$q" "$DURATION"
      if [ -n "${perf_pid:-}" ]; then
        wait "$perf_pid" || true; unset perf_pid; profiled=1
        mkdir -p "$(dirname "$OUT")"
        cp "$work/perf.data" "${OUT%.md}-perf.data"
        perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
          | grep -E '^ +[0-9.]+%' | sed 's/ *$//' > "${OUT%.md}-perf-symbols.txt" || true
        perf report -i "$work/perf.data" --no-children --sort dso --stdio 2>/dev/null \
          | grep -E '^ +[0-9.]+%' | sed 's/ *$//' > "${OUT%.md}-perf-dso.txt" || true
      fi
      ok=$(tail -1 "$rows" | python3 -c "import json,sys; r=json.load(sys.stdin); print(int(r['achieved'] >= 0.97*float(r['rate']) and r['errors'] == 0 and r['p99'] < $SLO_P99_MS))")
      if [ "$ok" = 1 ]; then
        sed -i '$ s/"label": "max-try"/"label": "max"/' "$rows"; break
      fi
    done
    grep -q "\"scenario\": \"$s\", \"label\": \"max\"" "$rows" || sed -i '$ s/"label": "max-try"/"label": "max", "unsustained": true/' "$rows"
  done
fi

if [ "$STREAM" = 1 ]; then
  for s in $SCENARIOS; do
    echo "== $s streamed: $STREAM_REQUESTS requests, $STREAM_CONCURRENCY in flight" >&2
    t0=$(ticks "${ROOT[$s]}")
    "$STREAM_CLIENT" --url "${URL[$s]}" --model "${MODEL[$s]}" --key "$KEY" \
      --requests "$STREAM_REQUESTS" --concurrency "$STREAM_CONCURRENCY" > "$work/stream.json"
    t1=$(ticks "${ROOT[$s]}")
    python3 - "$work/stream.json" "$s" "$t0" "$t1" "$HZ" >> "$rows" <<'PY'
import json, sys
path, s, t0, t1, hz = sys.argv[1:]
d = json.load(open(path)); cpu = (int(t1) - int(t0)) / int(hz)
d.update(kind="stream", scenario=s, cpu_s=cpu, cpu_per_k=cpu / max(d["ok"], 1) * 1000)
print(json.dumps(d))
PY
    sleep 1
  done
fi

for s in $SCENARIOS; do
  [ "$s" = direct ] && name=fake || { [ "$s" = litellm ] && name=litellm || name=triage; }
  read -r up first < "$work/$name.startup"
  echo "{\"kind\": \"proc\", \"scenario\": \"$s\", \"hwm_kb\": $(hwm_kb "${ROOT[$s]}"), \"procs\": $(tree "${ROOT[$s]}" | wc -l), \"health_s\": $up, \"first_s\": $first}" >> "$rows"
done

mkdir -p "$(dirname "$OUT")"
cp "$rows" "${OUT%.md}.jsonl"
python3 - "$rows" > "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
plain = [r for r in rows if r["kind"] == "plain" and r["label"] not in ("probe", "max-try")]
probe = {r["scenario"]: r for r in rows if r["kind"] == "plain" and r["label"] == "probe"}
direct = {r["label"]: r for r in plain if r["scenario"] == "direct"}
f = lambda v: f"{v:.3f}" if v < 100 else f"{v:.1f}"
print("Non-streamed (oha open loop; `max` = the highest sustained of 0.9/0.75/0.6 x the closed-loop probe throughput; `max*` = none was sustained, last attempt shown):\n")
print("| scenario | rate (req/s) | achieved (req/s) | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | CPU s / 1k req |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
order = {s: i for i, s in enumerate(["direct", "triage-fixed", "triage-auto", "litellm"])}
labels = []
for r in plain:
    if r["label"] not in labels: labels.append(r["label"])
for lab in labels:
    for r in sorted((r for r in plain if r["label"] == lab), key=lambda r: order.get(r["scenario"], 9)):
        d = direct.get(lab)
        same = d is not None and lab != "max"
        add = lambda k: "-" if r["scenario"] == "direct" or not same else f(r[k] - d[k])
        rate = r["rate"] if lab != "max" else f"max{'*' if r.get('unsustained') else ''}: {r['rate']}"
        cpu = "-" if r["scenario"] == "direct" else f"{r['cpu_per_k']:.3f}"
        print(f"| {r['scenario']} | {rate} | {r['achieved']:.0f} | {r['errors']} | {f(r['p50'])} | {f(r['p90'])} | {f(r['p99'])} | {f(r['p99.9'])} | {add('p50')} | {add('p99')} | {cpu} |")
if probe:
    print("\nClosed-loop probe throughput (req/s): " + ", ".join(f"{s} {probe[s]['achieved']:.0f}" for s in sorted(probe, key=lambda s: order.get(s, 9))))
st = [r for r in rows if r["kind"] == "stream"]
if st:
    r0 = st[0]
    print(f"\nStreamed ({r0['requests']} requests per scenario, {r0['concurrency']} in flight, {r0['tokens_per_stream']} content events per stream):\n")
    print("| scenario | achieved (req/s) | errors | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | gap p50 ms | gap p90 ms | gap p99 ms | gap max ms | stream p50 ms | added TTFT p50 ms | CPU s / 1k streams |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    d = next((r for r in st if r["scenario"] == "direct"), None)
    for r in st:
        t, g = r["ttft_ms"], r["gap_ms"]
        add = "-" if r["scenario"] == "direct" or d is None else f(t["p50"] - d["ttft_ms"]["p50"])
        cpu = "-" if r["scenario"] == "direct" else f"{r['cpu_per_k']:.3f}"
        print(f"| {r['scenario']} | {r['req_per_s']:.0f} | {r['errors']} | {f(t['p50'])} | {f(t['p90'])} | {f(t['p99'])} | {f(g['p50'])} | {f(g['p90'])} | {f(g['p99'])} | {f(g['max'])} | {f(r['total_ms']['p50'])} | {add} | {cpu} |")
pr = [r for r in rows if r["kind"] == "proc"]
rr = {r["scenario"]: r["hwm_kb"] for r in rows if r["kind"] == "rss-rates"}
print("\nProcesses (peak RSS = VmHWM summed over the process tree, after the fixed rates and at the end of the run; start-up = spawn to first healthy response / to first 200 chat completion):\n")
print("| scenario | processes | peak RSS after fixed rates MiB | peak RSS at end MiB | start-up to healthy s | start-up to first completion s |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for r in pr:
    name = "fake upstream" if r["scenario"] == "direct" else r["scenario"]
    mid = f"{rr[r['scenario']]/1024:.1f}" if r["scenario"] in rr else "-"
    print(f"| {name} | {r['procs']} | {mid} | {r['hwm_kb']/1024:.1f} | {r['health_s']:.3f} | {r['first_s']:.3f} |")
PY
cat "$OUT"
