"""`jouletune tune --gpu-profile`: the sim-servers a study starts run the profile's GPU, and a
profile the sim-servers would refuse stops the study before any trial."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from jouletune.gpu.simulated import gpu_model
from jouletune.profile import GpuProfile, ProfileParameters
from jouletune.sim import DEFAULT_PERF, builtin_parameters
from jouletune.tuner import Point, SimRunner, parse_spec
from jouletune.tuner.cli import tune_main
from tests.tuner.tune_procs import run_tune, write_spec

IDLE_W = 163.0


def _profile(path: Path, gpu: str = "h100-80gb", *, caps_measured: bool = False) -> Path:
    params = builtin_parameters(gpu_model(gpu), DEFAULT_PERF).model_copy(
        update={"idle_loaded_w": IDLE_W}
    )
    GpuProfile(
        gpu=gpu,
        parameters=params,
        sources=dict.fromkeys(ProfileParameters.model_fields, "fitted"),
        power_limits_measured=caps_measured,
    ).write(path)
    return path


def test_the_sim_runner_starts_servers_on_the_profiles_gpu(tmp_path: Path) -> None:
    spec = parse_spec({"engine": {"maxModelLen": 512, "startupTimeoutS": 60}})
    runner = SimRunner(spec=spec, gpu_profile=_profile(tmp_path / "p.json"))

    async def idle_power_w() -> float:
        point = Point(tensor_parallel_size=1, max_num_seqs=8)
        async with runner.server(point, log_dir=tmp_path / "srv") as running:
            url = running.server.url + "/sim/gpus"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        return float(json.loads(body)["gpus"][0]["power_w"])

    # Power averages the last second, which may reach back before the server loaded.
    assert abs(asyncio.run(idle_power_w()) / IDLE_W - 1) < 0.01


def _tune(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`jouletune tune ARGV` in this process: (exit code, stderr)."""
    code = tune_main(list(argv))
    return code, capsys.readouterr().err


def test_tune_refuses_a_bad_profile_before_any_trial(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, out = write_spec(tmp_path / "tiny.yaml"), tmp_path / "out"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, err = _tune(capsys, str(config), "--out", str(out), "--gpu-profile", str(bad))
    assert code == 2
    assert err.count("\n") == 1 and "--gpu-profile" in err and "not a GPU profile" in err
    assert not list(out.glob("servers/*"))


def test_tune_refuses_a_profile_of_another_gpu_or_a_real_backend(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_spec(tmp_path / "tiny.yaml")
    a100 = _profile(tmp_path / "a100.json", gpu="a100-80gb")
    argv = [str(config), "--out", str(tmp_path / "o1"), "--gpu-profile", str(a100)]
    code, err = _tune(capsys, *argv)
    assert code == 2 and "a100-80gb" in err and "h100-80gb" in err
    h100 = _profile(tmp_path / "h100.json")
    argv = [str(config), "--out", str(tmp_path / "o2"), "--backend", "local"]
    code, err = _tune(capsys, *argv, "--gpu-profile", str(h100))
    assert code == 2 and "--backend sim" in err


def test_a_cap_predicted_with_a_profile_measured_under_caps_says_so(tmp_path: Path) -> None:
    config, out = write_spec(tmp_path / "tiny.yaml"), tmp_path / "out"
    profile = _profile(tmp_path / "capped.json", caps_measured=True)
    code, log = run_tune(config, out, "--gpu-profile", str(profile))
    assert code == 0, log
    recorded = json.loads((out / "run.json").read_text())["sim_profile"]
    assert recorded["path"] == str(profile) and recorded["power_limits_measured"]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["recommended"]["point"]["power_limit_w"] is not None, "a cap is recommended"
    (caveat,) = [c for c in rec["caveats"] if "power-cap" in c]
    assert str(profile) in caveat and "under power limits" in caveat
