#!/usr/bin/env bash
# The guard (rules + entity recogniser) in the gateway: added latency over calling the fake
# upstream directly, for a harness-like conversation whose last user message is new each request
# (scanned) or resent unchanged (verdict cache hit). Sequential keep-alive requests; prints a
# Markdown table. Ports 29911/29912 (UP_PORT/GW_PORT), N requests per scenario (default 1000).
#
#   bench/guard_gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
UP_PORT=${UP_PORT:-29911}
GW_PORT=${GW_PORT:-29912}
cargo build --release --locked -p triage -p triage-testkit >&2
source bench/lib.sh
bench_workdir
fake_catalog "$UP_PORT" "" | grep -v '^\[spend\]$' | grep -v '^database = ""$' > "$work/t.toml"
printf '[guard]\ndefault = "allow"\n[guard.kinds]\nperson = "local_only"\n' >> "$work/t.toml"
./target/release/triage-fake-upstream --listen "127.0.0.1:$UP_PORT" 2>/dev/null & pids+=($!)
TRIAGE_LOG=warn ./target/release/triage serve --config "$work/t.toml" --listen "127.0.0.1:$GW_PORT" & pids+=($!)
for _ in $(seq 100); do curl -fsS "127.0.0.1:$GW_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
# The guard is on: the planted name and address are reported.
curl -s -D - -o /dev/null "127.0.0.1:$GW_PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"fake-local","messages":[{"role":"user","content":"Please send the summary to Valomir Trezanko at 12 Kestrel Road, Dunmore today."}]}' \
  | grep -i "x-triage-sensitivity" >&2
python3 bench/guard_gateway.py "$UP_PORT" "$GW_PORT" "${N:-1000}"
