"""Read-only check, on a GPU host, of how a trial pod hands its GPUs to the exporter sidecar.

    PYTHONPATH=src python3 benchmarks/h100_vllm/gpu_list_check.py

Runs the engine container's real start script (`ENGINE_SCRIPT`, read from
`jouletune/operator/_containers.py` without importing the operator) with a stand-in `vllm` on PATH,
and `jouletune exporter --gpus-file` beside it, as in a pod; then scrapes the exporter and
checks it exports exactly the GPUs the script listed, by UUID, from NVML. Changes no GPU
setting. Exits 0 when they match, 1 when not.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
_CONTAINERS = _ROOT / "src" / "jouletune" / "operator" / "_containers.py"
# The repository root, for the tests' process helpers.
sys.path.insert(0, str(_ROOT))
from tests.procs import free_port  # noqa: E402


def engine_script() -> str:
    """The ENGINE_SCRIPT constant of the trial pod's engine container (string constants joined
    with `+`, read from the source so that the operator's dependencies need not be here)."""
    strings: dict[str, str] = {}

    def value(node: ast.expr) -> str:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.Name):
            return strings[node.id]
        return str(ast.literal_eval(node))

    for node in ast.parse(_CONTAINERS.read_text()).body:
        target = getattr(node, "targets", [None])[0]
        if isinstance(node, ast.Assign) and isinstance(target, ast.Name):
            try:
                strings[target.id] = value(node.value)
            except (ValueError, KeyError):
                continue  # not a string constant
    if "ENGINE_SCRIPT" not in strings:
        raise SystemExit(f"gpu_list_check: no ENGINE_SCRIPT in {_CONTAINERS}")
    return strings["ENGINE_SCRIPT"]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def main() -> int:
    """Run the hand-over once; 0 when the exported GPUs are the listed ones."""
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        listed, stub, port = tmp / "gpus", tmp / "bin" / "vllm", free_port()
        stub.parent.mkdir()
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        argv = ["exporter", "--host", "127.0.0.1", "--port", str(port), "--gpus-file", str(listed)]
        exporter = subprocess.Popen(
            [sys.executable, "-m", "jouletune", *argv], stderr=subprocess.PIPE, text=True
        )
        try:
            assert exporter.stderr is not None
            for line in exporter.stderr:  # the sidecar starts first and waits for the list
                if "waiting for the GPU list" in line:
                    break
            env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
            env["JOULETUNE_GPU_LIST"] = str(listed)
            subprocess.run(["/bin/sh", "-c", engine_script(), "engine"], env=env, check=True)
            metrics = _scrape(exporter, f"http://127.0.0.1:{port}")
        finally:
            exporter.terminate()
            _, err = exporter.communicate(timeout=10)
        want = listed.read_text().split()
    lines = [m for m in metrics.splitlines() if m.startswith("jouletune_gpu_energy_joules_total")]
    got = sorted(m.split('uuid="')[1].split('"')[0] for m in lines)
    print(f"listed by the engine script: {want}\nexported: {got}")
    print(err.strip().splitlines()[-1] if err.strip() else "")
    ok = got == sorted(want)
    print("gpu_list_check: ok" if ok else "gpu_list_check: MISMATCH")
    return 0 if ok else 1


def _scrape(exporter: subprocess.Popen[str], url: str) -> str:
    """/metrics once /healthz answers; "" if the exporter died first (its stderr says why)."""
    for _ in range(100):
        if exporter.poll() is not None:
            return ""
        try:
            _get(f"{url}/healthz")
        except OSError:
            time.sleep(0.2)
            continue
        return _get(f"{url}/metrics")
    return ""


if __name__ == "__main__":
    sys.exit(main())
