"""`jouletune tune --backend local` as a real process on a simulated two-GPU node: the GPU the
engine uses (CUDA_VISIBLE_DEVICES=1) is the one counted, capped and clock-locked, and after a
SIGKILL mid-study the next run restores its original limit, or resets its lock, before
anything else, and says so.

The engine is `jouletune sim-server --node-gpus 2` (vLLM's flags; it places its engine as CUDA
would), and its `/sim/gpus` stands in for the node's NVML (JOULETUNE_SIM_GPUS_URL). A real
GPU outlives the process that capped it; so that the simulated one does too, the sim-server
is started through `sh`, whose child does not inherit the parent-death signal the runner sets
(a runner's server normally dies with a killed tune, PR_SET_PDEATHSIG): killed, the tune
leaves the sim-server running with the cap, as a GPU would keep it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jouletune.gpu import GpuSetting, LimitStore
from tests.left_records import leave_record
from tests.poll import wait_for
from tests.procs import free_port
from tests.tuner.tune_procs import clock_locks_set, power_limits_set, server_logs, start_tune

SPEC = """\
apiVersion: jouletune.io/v1alpha1
kind: EnergyBenchmark
metadata: {name: local}
spec:
  model: meta-llama/Llama-3.1-8B-Instruct
  backend: vllm
  engine: {maxModelLen: 512, startupTimeoutS: 60}
  searchSpace: {maxNumSeqs: [8, 32], powerLimitW: [400, 300]}
  workload: {inputLen: 64, outputLen: 16, maxConcurrency: 8, numPrompts: 200, durationS: 1.5}
  slos: [{metric: tpot_p90, maxMs: 1000}]
  budget: {maxTrials: 5, finalistRepeats: 0, trialTimeoutS: 60}
"""


def _env(tmp: Path) -> dict[str, str]:
    """The stand-ins: the sim-server as vLLM (outliving a killed tune, its pid in a file), the
    exporter reading its GPUs, its node as NVML; the engine on the node's GPU 1."""
    sim = f'"$0" -m jouletune sim-server --node-gpus 2 "$@" & echo $! > {tmp}/sim.pid; wait'
    return {
        "JOULETUNE_VLLM_CMD": shlex.join(["sh", "-c", sim, sys.executable]),
        "JOULETUNE_EXPORTER_CMD": f"{sys.executable} -m jouletune exporter --sim {{server_url}}",
        "JOULETUNE_SIM_GPUS_URL": "{server_url}",
        "CUDA_VISIBLE_DEVICES": "1",
    }


def _gpus(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/sim/gpus", timeout=5) as resp:
        gpus: list[dict[str, Any]] = json.loads(resp.read())["gpus"]
    return gpus


def _limits(url: str) -> list[float]:
    return [g["power_limit_w"] for g in _gpus(url)]


def _locks(url: str) -> list[int | None]:
    """Each GPU's SM clock lock, as the simulator serves it (NVML could not)."""
    return [g["sm_clock_lock_mhz"] for g in _gpus(url)]


@dataclass
class _Killed:
    """A tune SIGKILLed while a GPU setting was changed, and the run after it."""

    pid: int
    url: str
    record_path: Path
    record: dict[str, Any]
    left: list[Any]  # the setting of each GPU once the tune was dead
    restored: list[Any]  # ... once the next run had started its study
    first_line: str
    output: str


def _kill_mid_study_and_rerun(
    tmp_path: Path, spec: str, *, changed: Callable[[Path], bool], read: Callable[[str], list[Any]]
) -> _Killed:
    """Run a local-backend tune, SIGKILL it once `changed(server log)`, read the setting left
    on the node's GPUs with `read(url)`, then start the next run and read it again."""
    config = tmp_path / "local.yaml"
    config.write_text(spec)
    state = tmp_path / "state"
    port = free_port()
    env = _env(tmp_path)
    common = ["--backend", "local", "--state-dir", str(state)]
    proc, log_path = start_tune(config, tmp_path / "out", *common, "--port", str(port), env=env)
    orphan: int | None = None
    try:
        wait_for(
            lambda: any(changed(log) for log in server_logs(tmp_path / "out")),
            timeout_s=90,
            proc=proc,
            what="a GPU setting changed",
        )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        orphan = int((tmp_path / "sim.pid").read_text())
        url = f"http://127.0.0.1:{port}"
        left = read(url)
        (record_path,) = state.glob("*.json")
        record = json.loads(record_path.read_text())
        # The next run (on another port: the old server still holds that one) restores first.
        again, again_log = start_tune(
            config, tmp_path / "out2", *common, "--port", str(free_port()), env=env
        )
        try:
            wait_for(
                lambda: "resuming" in again_log.read_text() or server_logs(tmp_path / "out2"),
                timeout_s=60,
                proc=again,
                what="the second run to start its study",
            )
            restored = read(url)
        finally:
            again.send_signal(signal.SIGTERM)
            again.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if orphan is not None:
            _stop(orphan)
    output = log_path.read_text() + again_log.read_text()
    return _Killed(
        pid=proc.pid, url=url, record_path=record_path, record=record, left=left,
        restored=restored, first_line=again_log.read_text().splitlines()[0], output=output,
    )  # fmt: skip


def test_after_sigkill_mid_study_the_next_run_restores_the_limit_first(tmp_path: Path) -> None:
    run = _kill_mid_study_and_rerun(
        tmp_path, SPEC, changed=lambda log: bool(power_limits_set(log)), read=_limits
    )
    left, record = run.left, run.record
    # The cap went to the engine's GPU (1) only, and it outlived the killed tune.
    assert left[0] == 700.0 and left[1] in (400.0, 300.0)
    assert (record["uuid"], record["original_w"]) == ("GPU-sim-h100-80gb-0001", 700.0)
    assert record["pid"] == run.pid and record["host"] == socket.gethostname()
    assert run.first_line == (
        f"jouletune tune: restored GPU 1 (GPU-sim-h100-80gb-0001) power limit to 700 W from "
        f"{left[1]:g} W, left changed by jouletune pid {run.pid} on host "
        f"{socket.gethostname()} ({_written(record)})"
    )
    assert run.restored == [700.0, 700.0]
    assert not run.record_path.exists()
    assert "Traceback" not in run.output


def test_after_sigkill_with_a_clock_locked_the_next_run_resets_it_first(tmp_path: Path) -> None:
    spec = SPEC.replace("powerLimitW: [400, 300]", "smClockMhz: [1500, 990]")
    run = _kill_mid_study_and_rerun(
        tmp_path, spec, changed=lambda log: any(clock_locks_set(log)), read=_locks
    )
    # The lock went to the engine's GPU (1) only, and it outlived the killed tune.
    assert run.left[0] is None and run.left[1] in (1500, 990)
    record = run.record
    assert run.record_path.name.endswith(".sm-clock-lock.json")
    assert (record["uuid"], record["setting"]) == ("GPU-sim-h100-80gb-0001", "sm_clock_lock")
    assert record["pid"] == run.pid and record["max_sm_clock_mhz"] == 1980
    assert run.first_line == (
        f"jouletune tune: reset GPU 1 (GPU-sim-h100-80gb-0001) SM clock lock, left locked by "
        f"jouletune pid {run.pid} on host {socket.gethostname()} ({_written(record)})"
    )
    assert run.restored == [None, None]
    assert not run.record_path.exists()
    assert "Traceback" not in run.output


def _written(record: dict[str, Any]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["written_unix_s"]))


def _stop(pid: int) -> None:
    """End the sim-server the killed tune left (started by this test, through the tune)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    wait_for(lambda: _gone(pid), timeout_s=20, what=f"sim-server {pid} to exit")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie of a reaped parent is gone for our purposes once init reaps it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("read_only", ["--read-only", "gpu.readOnly"])
@pytest.mark.parametrize(
    ("setting", "undo"),
    [
        (GpuSetting.POWER_LIMIT, "restore its 700 W limit"),
        (GpuSetting.SM_CLOCK_LOCK, "reset its SM clock lock"),
    ],
)
def test_read_only_refuses_to_measure_on_a_setting_a_killed_run_left(
    tmp_path: Path, setting: GpuSetting, undo: str, read_only: str
) -> None:
    store = LimitStore(tmp_path / "state")
    record, left = leave_record(
        store.directory, uuid="GPU-sim-h100-80gb-0000", address="http://127.0.0.1:1/sim/gpus",
        name="NVIDIA H100 80GB HBM3", setting=setting,
        original_w=700.0 if setting is GpuSetting.POWER_LIMIT else None,
    )  # fmt: skip
    result = _tune_read_only(tmp_path, store, read_only)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"jouletune tune: GPU 0 (GPU-sim-h100-80gb-0000) was left changed by {record.writer()} "
        f"({left}); rerun without --read-only to {undo} first"
    )
    assert left.exists() and not (tmp_path / "out").exists(), "nothing touched, nothing run"


def test_read_only_refuses_to_measure_beside_an_unreadable_record(tmp_path: Path) -> None:
    store = LimitStore(tmp_path / "state")
    store.directory.mkdir()
    (store.directory / "GPU-x.json").write_text("{")  # may stand for a cap: not "as found"
    result = _tune_read_only(tmp_path, store, "--read-only")
    assert result.returncode == 2
    assert result.stderr.startswith("jouletune tune: GPU state file ")
    assert "is unreadable" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists(), "nothing run"


def _tune_read_only(
    tmp_path: Path, store: LimitStore, read_only: str
) -> subprocess.CompletedProcess[str]:
    """`tune` made read-only by the flag or by the spec's `gpu.readOnly`."""
    spec = SPEC.replace("powerLimitW: [400, 300]", "powerLimitW: []")
    if read_only == "gpu.readOnly":
        spec += "  gpu: {readOnly: true}\n"
    config = tmp_path / "local.yaml"
    config.write_text(spec)
    flags = ["--read-only"] if read_only == "--read-only" else []
    return subprocess.run(
        [sys.executable, "-m", "jouletune", "tune", str(config), "--out", str(tmp_path / "out"),
         *flags, "--state-dir", str(store.directory)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
