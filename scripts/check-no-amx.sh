#!/usr/bin/env bash
# Checks that llama.cpp, as configured in a Cargo target directory, has ggml's AMX kernels
# compiled out even for a CPU that has AMX (issue 17; why: docs/RELIABILITY.md, "The local engine
# on every CPU"). This machine has no AMX, so `-march=native` never enables the AMX code here and
# the built library cannot show the difference; instead, for the llama.cpp build a cargo build
# links (or every one in a target directory), this takes the exact compile flags CMake generated
# for ggml's CPU backend
# (flags.make of the ggml-cpu target: CMAKE_<LANG>_FLAGS_RELEASE from .cargo/config.toml, then
# ggml's own flags), puts `-march=sapphirerapids` (an AMX CPU) in place of the build's `-march`,
# and preprocesses ggml's AMX kernel source (ggml-cpu/amx/mmq.cpp) and ggml-cpu.c with them:
#   - with the flags as built, the AMX kernel (`tinygemm_kernel_amx`) and `__AMX_INT8__` must be
#     gone;
#   - with the AMX flags removed (`-U__AMX_*`), both must be there, so the check is not vacuous
#     (the compiler knows the AMX CPU, and the source still has its AMX path).
# Usage:
#   scripts/check-no-amx.sh [cargo build options]   the llama.cpp build that `cargo build --release
#       --locked <options>` links (asked of cargo, which has nothing left to build right after the
#       build being checked; RUSTFLAGS and CARGO_TARGET_DIR apply as to that build), e.g.
#       `--workspace --bins`, or `-p triage-local`
#   scripts/check-no-amx.sh --all-in target/release   every llama.cpp build in that directory,
#       stale ones too
# Exits non-zero if a llama.cpp build checked keeps AMX, or if none is found.
set -euo pipefail
cd "$(dirname "$0")/.."

builds=()
if [ "${1:-}" = --all-in ]; then
  for b in "$2"/build/llama-cpp-sys-2-*/out/build; do builds+=("$b"); done
else
  while IFS= read -r out; do builds+=("$out/build"); done < <(
    cargo build --release --locked --message-format=json "$@" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-script-executed" and "llama-cpp-sys-2" in m.get("package_id", ""):
        print(m["out_dir"])' | sort -u)
fi

found=0
failed=0
for build in "${builds[@]}"; do
  flags_make=$build/ggml/src/CMakeFiles/ggml-cpu.dir/flags.make
  cache=$build/CMakeCache.txt
  [ -f "$flags_make" ] && [ -f "$cache" ] || continue
  found=$((found + 1))
  src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$cache")
  field() { sed -n "s/^$1 = //p" "$flags_make"; }
  compiler() { sed -n "s/^CMAKE_$1_COMPILER:[A-Z]*=//p" "$cache"; }
  # Any -march of the build replaced by an AMX CPU's.
  amx_cpu() { sed -E 's/(^| )-march=[^ ]+//g; s/$/ -march=sapphirerapids/'; }
  without_u() { sed -E 's/(^| )-U__AMX_[A-Z0-9]+__//g'; }
  cxx_flags=$(field CXX_FLAGS | amx_cpu)
  c_flags=$(field C_FLAGS | amx_cpu)
  cxx_rest="$(field CXX_DEFINES) $(field CXX_INCLUDES)"
  c_rest="$(field C_DEFINES) $(field C_INCLUDES)"
  kernel() { # $1: flags; prints how often the AMX kernel's name is left after preprocessing
    # shellcheck disable=SC2086
    "$(compiler CXX)" $1 $cxx_rest -E "$src/ggml/src/ggml-cpu/amx/mmq.cpp" | grep -c tinygemm_kernel_amx || true
  }
  macro() { # $1: flags; prints 1 if ggml-cpu.c sees __AMX_INT8__
    # shellcheck disable=SC2086
    "$(compiler C)" $1 $c_rest -dM -E "$src/ggml/src/ggml-cpu/ggml-cpu.c" | grep -c '#define __AMX_INT8__ ' || true
  }
  built_kernel=$(kernel "$cxx_flags")
  built_macro=$(macro "$c_flags")
  control_kernel=$(kernel "$(without_u <<<"$cxx_flags")")
  control_macro=$(macro "$(without_u <<<"$c_flags")")
  echo "$build: for an AMX CPU, AMX kernel lines $built_kernel (without -U__AMX_*: $control_kernel), __AMX_INT8__ in C $built_macro (without: $control_macro)"
  if [ "$control_kernel" -eq 0 ] || [ "$control_macro" -eq 0 ]; then
    echo "  FAIL: the control did not enable AMX (compiler without sapphirerapids, or the source moved): the check proves nothing" >&2
    failed=1
  elif [ "$built_kernel" -ne 0 ] || [ "$built_macro" -ne 0 ]; then
    echo "  FAIL: this llama.cpp build keeps AMX on AMX CPUs; .cargo/config.toml's CMAKE_{C,CXX}_FLAGS_RELEASE did not reach it (configured before they were set? cargo clean -p llama-cpp-sys-2)" >&2
    failed=1
  fi
done
if [ "$found" -eq 0 ]; then
  echo "FAIL: no configured llama.cpp build found" >&2
  exit 1
fi
exit "$failed"
