#!/usr/bin/env bash
# Soak: the gateway under steady load for a long time, recording its memory, file descriptors
# and log volume over time, then while idle after the load (does memory come back?).
#
# Starts the fast fake upstream and `triage serve` (release builds, default log level: what a
# user gets) on loopback, sends RATE requests per second (a Python client, keep-alive
# connections, non-streamed and streamed in turn) for DURATION seconds, samples the gateway's
# RSS, file descriptors, threads and log bytes every INTERVAL seconds, keeps sampling for IDLE
# seconds after the load, and writes the samples (CSV) and a Markdown summary.
#
#   bench/soak.sh                                   # 300 req/s for one hour, then 5 min idle
#   DURATION=600 IDLE=60 bench/soak.sh              # ten minutes
#   SKIP_BUILD=1 RATE=300 DURATION=120 bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-300}
DURATION=${DURATION:-3600}
IDLE=${IDLE:-300}
INTERVAL=${INTERVAL:-10}
CONNECTIONS=${CONNECTIONS:-16}
UP_PORT=${UP_PORT:-19911}
GW_PORT=${GW_PORT:-19912}
OUT=${OUT:-bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}
# The gateway binary to soak (e.g. a copy built from another commit, to compare).
TRIAGE_BIN=${TRIAGE_BIN:-./target/release/triage}

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -p triage -p triage-testkit >&2

source bench/lib.sh
bench_workdir
mkdir -p "$(dirname "$OUT")"

fake_catalog "$UP_PORT" "sqlite://$work/triage.db" > "$work/triage.toml"
./target/release/triage-fake-upstream --listen "127.0.0.1:$UP_PORT" 2>/dev/null & pids+=($!)
"$TRIAGE_BIN" serve --config "$work/triage.toml" --listen "127.0.0.1:$GW_PORT" 2> "$work/gateway.log" & gw_pid=$!; pids+=($gw_pid)
for url in "http://127.0.0.1:$UP_PORT/v1/models" "http://127.0.0.1:$GW_PORT/healthz"; do
  for _ in $(seq 100); do curl -fsS "$url" >/dev/null 2>&1 && break; sleep 0.1; done
done

python3 - "$GW_PORT" "$gw_pid" "$work/gateway.log" "$RATE" "$DURATION" "$IDLE" "$INTERVAL" "$CONNECTIONS" "$OUT" <<'PY'
import http.client, json, os, sys, threading, time

port, pid, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rate, duration, idle, interval = (float(a) for a in sys.argv[4:8])
conns, out = int(sys.argv[8]), sys.argv[9]

def status_kb(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

def sample(t0, sent, failed):
    return {
        "t_s": round(time.time() - t0, 1),
        "rss_mib": round(status_kb("VmRSS") / 1024, 2),
        # RSS split: anonymous memory (heap, stacks: what the allocator and caches hold) and
        # file-backed pages (the binary's code and data touched so far: not a leak).
        "anon_mib": round(status_kb("RssAnon") / 1024, 2),
        "file_mib": round(status_kb("RssFile") / 1024, 2),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": status_kb("Threads"),
        "log_bytes": os.path.getsize(log),
        "requests": sent,
        "errors": failed,
    }

bodies = [
    json.dumps({"model": m, "stream": s, "max_tokens": 64, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Summarise the meeting notes in three bullet points. ({m}, {s})"}]})
    for m in ("fake-local", "auto") for s in (False, True)
]
lock = threading.Lock()
counts = {"sent": 0, "failed": 0}
stop_at = time.time() + duration

def worker(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    period = conns / rate
    nxt = time.time() + (i / conns) * period
    k = i
    while True:
        now = time.time()
        if now >= stop_at:
            break
        if nxt > now:
            time.sleep(nxt - now)
        nxt += period
        ok = False
        try:
            c.request("POST", "/v1/chat/completions", bodies[k % len(bodies)], {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            ok = r.status == 200
        except Exception:
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        k += 1
        with lock:
            counts["sent"] += 1
            counts["failed"] += 0 if ok else 1

t0 = time.time()
samples = [sample(t0, 0, 0)]
# Warm-up: one request of each kind, so that what is loaded once (the router's model, the
# tokenizer tables, the first ledger rows, one metric series per label set) is told apart from
# what grows with load.
wc = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for b in bodies:
    wc.request("POST", "/v1/chat/completions", b, {"content-type": "application/json"})
    wc.getresponse().read()
wc.close()
time.sleep(1)
warm = sample(t0, len(bodies), 0)
threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
for t in threads:
    t.start()
end = t0 + duration + idle
while time.time() < end:
    time.sleep(interval)
    with lock:
        samples.append(sample(t0, counts["sent"], counts["failed"]))
for t in threads:
    t.join(timeout=1)

with open(out + ".csv", "w") as f:
    keys = list(samples[0].keys())
    f.write(",".join(keys) + "\n")
    for s in samples:
        f.write(",".join(str(s[k]) for k in keys) + "\n")
loaded = [s for s in samples if s["t_s"] <= duration + interval / 2]
first_min = next((s for s in samples if s["t_s"] >= 60), samples[-1])
last_loaded, last = loaded[-1], samples[-1]
peak = max(s["rss_mib"] for s in samples)
with open(out + ".md", "w") as f:
    f.write(f"Soak: {rate:.0f} req/s for {duration:.0f} s (then {idle:.0f} s idle), {conns} keep-alive connections, "
            f"default log level; sampled every {interval:.0f} s ({out}.csv).\n\n")
    f.write("| | t (s) | RSS (MiB) | anonymous (MiB) | file-backed (MiB) | fds | threads | log (bytes) | requests | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    for name, s in [("start", samples[0]), ("after warm-up (1 request of each kind)", warm), ("after 1 min", first_min), ("end of load", last_loaded), ("after idle", last)]:
        f.write(f"| {name} | {s['t_s']} | {s['rss_mib']} | {s['anon_mib']} | {s['file_mib']} | {s['fds']} | {s['threads']} | {s['log_bytes']} | {s['requests']} | {s['errors']} |\n")
    f.write(f"\nPeak RSS {peak} MiB; achieved {last['requests'] / max(duration, 1):.0f} req/s.\n")
print(open(out + ".md").read())
PY
