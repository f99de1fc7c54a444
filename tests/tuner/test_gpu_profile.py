"""`jouletune tune --gpu-profile`: the sim-servers a study starts run the profile's GPU, and a
profile the sim-servers would refuse stops the study before any trial."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from jouletune.gpu.simulated import gpu_model
from jouletune.profile import GpuProfile, ProfileParameters, Provenance
from jouletune.sim import DEFAULT_PERF, builtin_parameters
from jouletune.tuner import Point, SimRunner, parse_spec
from jouletune.tuner._provenance import PREDICTED_CAP_CAVEAT, SIMULATED_DRIVER
from jouletune.tuner.cli import tune_main
from tests.tuner.tune_procs import run_tune, write_spec

IDLE_W = 163.0


def _profile(
    path: Path, gpu: str = "h100-80gb", *, caps_measured: bool = False, driver: str | None = None
) -> Path:
    """A profile of `gpu`; with `driver`, as calibrated on a GPU of that driver version (the
    simulated GPU's is `simulated`), else hand-written."""
    params = builtin_parameters(gpu_model(gpu), DEFAULT_PERF).model_copy(
        update={"idle_loaded_w": IDLE_W}
    )
    made = None
    if driver is not None:
        made = Provenance(
            created="2026-12-07T12:00:00Z", jouletune_version="0.1.0",
            gpu_name=gpu_model(gpu).name, gpu_count=1, driver_version=driver,
            engine_version="0.24.0", server_model="m", sim_model="m", server_settings={},
            workloads=["512:256"], base_url="http://127.0.0.1:8000", exporter_urls=[],
            read_only=not caps_measured,
        )  # fmt: skip
    GpuProfile(
        gpu=gpu,
        parameters=params,
        sources=dict.fromkeys(ProfileParameters.model_fields, "fitted"),
        power_limits_measured=caps_measured,
        provenance=made,
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


@pytest.mark.parametrize("driver", ["580.159.04", SIMULATED_DRIVER, None])
def test_a_cap_predicted_with_a_profile_measured_under_caps_says_so_if_the_gpu_was_real(
    tmp_path: Path, driver: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = write_spec(tmp_path / "tiny.yaml"), tmp_path / "out"
    profile = _profile(tmp_path / "capped.json", caps_measured=True, driver=driver)
    code, log = run_tune(config, out, "--gpu-profile", str(profile))
    assert code == 0, log
    recorded = json.loads((out / "run.json").read_text())["sim_profile"]
    real = driver not in (SIMULATED_DRIVER, None)
    assert recorded["path"] == str(profile) and recorded["power_limits_measured"] is real
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["recommended"]["point"]["power_limit_w"] is not None, "a cap is recommended"
    if real:
        (caveat,) = [c for c in rec["caveats"] if "power-cap" in c]
        assert str(profile) in caveat and "under power limits" in caveat
    else:  # fitted to a simulated GPU, or hand-written: no real GPU answered a cap
        assert PREDICTED_CAP_CAVEAT in rec["caveats"], rec["caveats"]
    # Its trials are predictions with this profile: resuming without it would relabel them.
    code, err = _tune(capsys, str(config), "--out", str(out))
    assert code == 2 and f"simulated with --gpu-profile {profile}" in err, err
