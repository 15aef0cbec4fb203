# Shared by the bench scripts (sourced, not run): a temp dir with a cleanup trap that stops
# every process recorded in `pids`, and the two-model catalog over the fast fake upstream.

# Sets `work` (a temp dir) and `pids` (processes to stop), and stops them and removes the dir
# on exit.
bench_workdir() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# Prints the catalog: tiers local/mid/frontier, `fake-local` (local tier, free) and `fake-mid`
# (mid tier, tools) on the fake upstream at 127.0.0.1:$1; $2 is the ledger database URL ("" =
# no ledger).
fake_catalog() {
  cat <<TOML
tiers = ["local", "mid", "frontier"]
[spend]
database = "$2"
[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:$1/v1"
local = true
[[models]]
id = "fake-local"
provider = "fake"
upstream_model = "fake-upstream-model"
tier = "local"
price = { input = 0.0, output = 0.0 }
context_window = 8192
[[models]]
id = "fake-mid"
provider = "fake"
upstream_model = "fake-upstream-model"
tier = "mid"
price = { input = 1.0, output = 3.0 }
context_window = 128000
capabilities = ["tools"]
TOML
}
