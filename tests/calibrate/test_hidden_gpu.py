"""`jouletune calibrate` recovers a hidden GPU: a real sim-server runs secretly perturbed
parameters (`--gpu-profile`), `jouletune exporter --sim` reads its energy, and the calibration,
a real process measuring over loopback HTTP, must fit parameters whose predictions at points
it never measured stay within 5% of the hidden GPU's.

The predictions on both sides are the simulator's own, in simulated time, so the comparison
isolates what the calibration recovered; the measurements it fitted came through the load
generator like a user's (client, HTTP, exporter, steady-state window).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jouletune.calibrate import Workload, simulate_closed_loop
from jouletune.gpu import GpuSetting, LimitStore, open_sim_gpus
from jouletune.loadgen import BenchResult
from jouletune.profile import GpuProfile, ProfileParameters, load_profile
from tests.calibrate.hidden import BUILT_IN, HIDDEN, MODEL, SERVER_FLAGS, HeldOut, h100_setup
from tests.left_records import leave_record
from tests.procs import sim_exporter, sim_server
from tests.validity import SHORT_RUN

# Short closed loops (a CI machine measures them in ~45 s): three batch sizes, two context
# lengths (they separate the per-sequence and the per-context-token decode cost), one power
# limit that binds on decode and the default SM clock lock (60% of 1980 MHz: 1185 MHz), both
# of which separate SM from DRAM power. The long context is decode-heavy, so each window
# holds whole waves of prefill and a median of decode steps. Its 1,024-token prompt is what
# pins the GEMM efficiency: an idle engine's launch of an ungraphed prefill (~16.5 ms) hides
# part of a short prefill's GPU time (a one-stream TTFT at 512 tokens moves 3.5 ms between
# GEMM efficiency 0.75 and 1.0, at 1,024 tokens 7 ms), and with 512:128 the fit sometimes
# traded the efficiency to its ceiling against twice the tensor power (1 module run in 8
# failed); with 1024:128 six runs fitted 0.65-0.77 (hidden 0.75).
PLAN = [
    *("--concurrency", "1,8,32"),
    *("--workload", "64:64", "--workload", "1024:128"),
    *("--duration", "4", "--cap-concurrency", "8"),
    *SERVER_FLAGS,
    *SHORT_RUN,
]
CAP = ["--power-limit", "280"]
DEFAULT_LOCK = "c8_w64-64_f1185mhz"
# Other batch sizes, context lengths, a cap and a clock lock.
HELD_OUT = [
    HeldOut(4, Workload(input_len=64, output_len=64)),
    HeldOut(16, Workload(input_len=256, output_len=128)),
    HeldOut(24, Workload(input_len=512, output_len=64)),
    HeldOut(2, Workload(input_len=384, output_len=128)),
    HeldOut(16, Workload(input_len=64, output_len=64), power_limit_w=350.0),
    HeldOut(16, Workload(input_len=256, output_len=128), sm_clock_lock_mhz=1410),
]
# The bound. With 512:128 as its long workload, this plan's worst held-out error read
# 3.0-3.8% in three runs and 5.01% once in CI while the sim-server woke on asyncio's timers (up
# to 1 ms late) and stamped a burst's requests one handler after another; on its own wall
# clock, stamping a burst at once, 0.6%, 0.8% and 1.4% (2026-12-07); with 1024:128, 1.9% and
# 2.6% (two runs of six that passed, 2026-12-07, later).
TOLERANCE = 0.05


@dataclass(frozen=True)
class Calibration:
    """A finished calibration against the hidden GPU, with its servers still up."""

    out: Path
    argv: list[str]
    stdout: str
    gpus_after: list[dict[str, object]]


def _calibrate(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jouletune", "calibrate", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Calibration]:
    root = tmp_path_factory.mktemp("hidden-gpu")
    hidden = root / "hidden.json"
    GpuProfile(
        gpu="h100-80gb",
        parameters=HIDDEN,
        sources=dict.fromkeys(ProfileParameters.model_fields, "built-in"),
        power_limits_measured=False,
    ).write(hidden)
    with (
        sim_server(MODEL, *SERVER_FLAGS, "--gpu-profile", str(hidden)) as server,
        sim_exporter(server.url) as exporter,
    ):
        argv = ["--base-url", server.url, "--exporter-url", exporter.url, "--out", str(root)]
        done = _calibrate([*argv, *PLAN, *CAP, "--state-dir", str(root / "state")])
        assert done.returncode == 0, done.stderr
        with urllib.request.urlopen(f"{server.url}/sim/gpus") as resp:
            gpus_after = json.loads(resp.read())["gpus"]
        yield Calibration(out=root, argv=argv, stdout=done.stdout, gpus_after=gpus_after)


def _worst_errors(params: ProfileParameters, points: list[HeldOut]) -> dict[str, float]:
    """Largest |prediction / hidden GPU's - 1| of J/token and ITL p50 over `points`."""
    setup, worst = h100_setup(), {"j_per_output_token": 0.0, "itl_ms_p50": 0.0}
    for point in points:
        figures = [
            simulate_closed_loop(
                setup,
                p,
                concurrency=point.concurrency,
                workload=point.workload,
                duration_s=8.0,
                power_limit_w=point.power_limit_w,
                sm_clock_lock_mhz=point.sm_clock_lock_mhz,
            )
            for p in (params, HIDDEN)
        ]
        predicted, truth = figures
        assert predicted is not None and truth is not None, "a 8 s closed loop has a window"
        for name in worst:
            error = getattr(predicted, name) / getattr(truth, name) - 1
            worst[name] = max(worst[name], abs(error))
    return worst


def _explain(worst: dict[str, float], profile: GpuProfile) -> str:
    """What a miss needs for a diagnosis: the errors, the fitted values, each point's fit."""
    fitted = {name: getattr(profile.parameters, name) for name in profile.fitted()}
    points = {p.name: {k: round(v, 3) for k, v in p.errors.items()} for p in profile.points}
    return f"worst {worst}; fitted {fitted}; points {points}"


def test_calibration_predicts_unmeasured_points_of_the_hidden_gpu(
    calibration: Calibration,
) -> None:
    profile = load_profile(calibration.out / "profile.json")
    # The hidden GPU really differs: the built-in parameters miss it by over twice the bound.
    assert min(_worst_errors(BUILT_IN, HELD_OUT).values()) > 2 * TOLERANCE
    worst = _worst_errors(profile.parameters, HELD_OUT)
    assert max(worst.values()) <= TOLERANCE, _explain(worst, profile)
    assert profile.power_limits_measured and profile.clock_locks_measured
    assert profile.sources["dram_w"] == "fitted"
    assert profile.sources["idle_loaded_w"] == "measured"
    assert profile.parameters.idle_loaded_w == pytest.approx(HIDDEN.idle_loaded_w, rel=0.01)
    assert profile.sources["host_step_s"] == "built-in"


def test_every_measured_point_is_kept_with_its_replay(calibration: Calibration) -> None:
    profile = load_profile(calibration.out / "profile.json")
    names = {p.name for p in profile.points}
    assert names == {
        *(f"c{c}_w{w}" for c in (1, 8, 32) for w in ("64-64", "1024-128")),
        "c8_w64-64_p280w",
        DEFAULT_LOCK,
    }
    for point in profile.points:
        result = BenchResult.model_validate_json((calibration.out / point.result_file).read_text())
        assert result.requests, "the replay needs every request's lengths"
        assert point.predicted is not None
        assert point.measured.j_per_output_token == result.energy_per_output_token_j
    assert "fitted" in calibration.stdout and "c8_w64-64_p280w" in calibration.stdout
    locked = next(p for p in profile.points if p.name == DEFAULT_LOCK)
    assert locked.sm_clock_lock_mhz == 1185
    assert locked.measured.sm_clock_mhz == pytest.approx(1185, abs=1)
    assert locked.predicted is not None and locked.predicted.sm_clock_mhz == pytest.approx(1185)


def test_the_gpu_is_as_found_after_the_calibration(calibration: Calibration) -> None:
    (gpu,) = calibration.gpus_after
    assert gpu["sm_clock_lock_mhz"] is None
    assert gpu["power_limit_w"] == gpu["power_limit_range"]["default_w"]  # type: ignore[index]


def test_read_only_rerun_keeps_the_points_and_fits_the_batch_sweep_only(
    calibration: Calibration,
) -> None:
    before = sorted((calibration.out / "points").iterdir())
    profile_path = calibration.out / "read-only.json"
    done = _calibrate([*calibration.argv, *PLAN, "--read-only", "--profile", str(profile_path)])
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("measured before, kept") == 6
    assert sorted((calibration.out / "points").iterdir()) == before
    profile = load_profile(profile_path)
    assert not profile.power_limits_measured
    assert profile.provenance is not None and profile.provenance.read_only
    assert profile.sources["dram_w"] == "built-in"
    assert not profile.clock_locks_measured
    assert "power limits were not measured" in done.stdout
    assert "SM clock locks were not measured" in done.stdout
    # Without caps or locks the SM/DRAM split stays built-in, yet points without either
    # still come out right.
    worst = _worst_errors(profile.parameters, [p for p in HELD_OUT if p.as_found])
    assert max(worst.values()) <= TOLERANCE, _explain(worst, profile)


def test_a_lock_a_killed_run_left_is_reset_before_anything_is_measured(
    calibration: Calibration, tmp_path: Path
) -> None:
    server_url, exporter_url = calibration.argv[1], calibration.argv[3]
    (gpu,) = open_sim_gpus(server_url)
    store = LimitStore(tmp_path / "state")
    record, left = leave_record(
        store.directory, uuid=gpu.uuid, address=f"{server_url}/sim/gpus", name=gpu.name,
        setting=GpuSetting.SM_CLOCK_LOCK, max_sm_clock_mhz=1980,
    )  # fmt: skip
    gpu.set_sm_clock_lock_mhz(1500)
    plan = [
        *("--concurrency", "1", "--workload", "32:32", "--duration", "2"),
        *("--power-limit", "400", "--sm-clock", "1410", "--cap-concurrency", "1"),
        *SERVER_FLAGS,
        *SHORT_RUN,
    ]
    done = _calibrate(
        ["--base-url", server_url, "--exporter-url", exporter_url, "--out", str(tmp_path / "out"),
         "--state-dir", str(store.directory), *plan]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"jouletune calibrate: reset GPU 0 ({gpu.uuid}) SM clock lock")
    assert f"left locked by jouletune pid {record.pid}" in first
    assert not left.exists() and not list(store.directory.glob("*.json"))
    with urllib.request.urlopen(f"{server_url}/sim/gpus") as resp:
        (after,) = json.loads(resp.read())["gpus"]
    assert after["sm_clock_lock_mhz"] is None


def test_a_lock_or_cap_outside_the_gpus_range_stops_before_anything_is_measured(
    calibration: Calibration, tmp_path: Path
) -> None:
    urls = calibration.argv[:4]
    for flag, value, unit in (("--sm-clock", "5000", "MHz"), ("--power-limit", "90", "W")):
        out = tmp_path / flag.strip("-")
        done = _calibrate([*urls, "--out", str(out), *PLAN, flag, value])
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"jouletune calibrate: error: {flag}: "), line
        assert f" {value} {unit} is outside GPU 0 " in line, line
        assert not (out / "points").exists()
