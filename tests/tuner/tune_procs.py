"""Helpers for tests that run a real `jouletune tune` process against the simulator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# Small enough that a trial takes ~3 s on a busy 2-core machine, large enough for a real
# steady-state window (8 streams, 16 tokens each, ~1.5 s of sending).
TINY_SPEC = """\
apiVersion: jouletune.io/v1alpha1
kind: EnergyBenchmark
metadata: {{name: tiny}}
spec:
  model: meta-llama/Llama-3.1-8B-Instruct
  engine: {{maxModelLen: 512, startupTimeoutS: 60}}
  searchSpace: {{maxNumSeqs: [8, 32], powerLimitW: [400, 300]}}
  workload: {{inputLen: 64, outputLen: 16, maxConcurrency: 8, numPrompts: 200, durationS: 1.5}}
  slos: [{{metric: tpot_p90, maxMs: {slo_ms}}}]
  budget: {{maxTrials: {max_trials}, finalistRepeats: {repeats}, trialTimeoutS: 60}}
  # A second or two per trial: shorter than a real measurement may be (test_checks.py).
  validity: {{minWindowS: 0.2, minWindowOutputTokens: 20, minEnergySamples: 4,
             maxSmClockDrift: 0.5}}
"""


# `jouletune` with Ctrl-C enabled: a test run from a background job inherits SIGINT ignored,
# which the tuner rightly respects (as under nohup), so reset it, then exec.
_WITH_CTRL_C = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'jouletune', *sys.argv[1:]])"
)


def write_spec(path: Path, *, slo_ms: float = 14, max_trials: int = 3, repeats: int = 0) -> Path:
    """A tiny quickstart-like spec file."""
    path.write_text(TINY_SPEC.format(slo_ms=slo_ms, max_trials=max_trials, repeats=repeats))
    return path


def start_tune(
    config: Path, out: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `jouletune tune CONFIG --out OUT`; stdout+stderr go to OUT.log."""
    log_path = out.with_suffix(".log")
    log = open(log_path, "ab")  # noqa: SIM115 - closed by the process's end (see finish)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITH_CTRL_C, "tune", str(config), "--out", str(out), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    log.close()
    return proc, log_path


def run_tune(config: Path, out: Path, *extra: str, timeout_s: float = 120) -> tuple[int, str]:
    """Run `jouletune tune` to its end; return (exit code, its output)."""
    proc, log_path = start_tune(config, out, *extra)
    try:
        code = proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log_path.read_text()


def server_logs(out: Path) -> list[Path]:
    """The server logs of every server the run started, oldest first."""
    return sorted(out.glob("servers/*/server.log"))


def power_limits_set(log: Path) -> list[float]:
    """Every power limit the sim-server was asked to set, in order (from its log)."""
    return [float(w) for w in re.findall(r"power limit set to ([\d.]+) W", log.read_text())]


def clock_locks_set(log: Path) -> list[int | None]:
    """Every SM clock lock the sim-server was asked to set (None: a reset), in order."""
    found = re.findall(r"SM clock (?:locked at (\d+) MHz|lock reset)", log.read_text())
    return [int(mhz) if mhz else None for mhz in found]


def server_port(log: Path) -> int:
    """The port a server was started on (the command line opens its log)."""
    match = re.search(r"--port (\d+)", log.read_text().splitlines()[0])
    assert match is not None, f"no --port in {log}"
    return int(match.group(1))
