#!/bin/bash
# Re-split a vLLM bundle built by shared/vllm-h100/build.sh into N equal parts, in place, so
# that each part fits beside this repository under the device machine's 64 MiB per call
# (build.sh's 58 MiB parts do not: the tracked tree is ~15 MB). install.sh joins `part?` and
# checks the same SHA256. Usage: resplit_bundle.sh BUNDLE_DIR [N]   (default 3)
set -euo pipefail
DIR=$1; N=${2:-3}
TMP=$(mktemp); trap 'rm -f "$TMP"' EXIT
cat "$DIR"/part? > "$TMP"
(cd "$(dirname "$TMP")" && sha256sum "$(basename "$TMP")") | awk '{print $1}' \
  | grep -qx "$(awk '{print $1}' "$DIR/SHA256")" || { echo "resplit: parts do not match SHA256"; exit 1; }
rm -f "$DIR"/part?
split -n "$N" -d -a 1 "$TMP" "$DIR/part"
ls -la "$DIR"/part?
