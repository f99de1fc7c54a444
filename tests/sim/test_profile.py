"""GPU profiles in the simulator: every parameter lands where the model reads it, the file is
checked with one-line errors, and `jouletune sim-server --gpu-profile` runs with it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from jouletune.gpu.simulated import gpu_model
from jouletune.profile import GpuProfile, ProfileParameters, load_profile
from jouletune.sim import DEFAULT_PERF, apply_profile, builtin_parameters
from jouletune.sim.cli import build_config, parse_args
from tests.procs import sim_server

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
H100 = gpu_model("h100-80gb")
BUILT_IN = builtin_parameters(H100, DEFAULT_PERF)


def _write(path: Path, params: ProfileParameters, gpu: str = "h100-80gb") -> Path:
    GpuProfile(
        gpu=gpu,
        parameters=params,
        sources=dict.fromkeys(ProfileParameters.model_fields, "fitted"),
        power_limits_measured=True,
    ).write(path)
    return path


def test_every_parameter_reaches_the_model_and_comes_back() -> None:
    doubled = ProfileParameters(**{k: 2 * v for k, v in BUILT_IN.model_dump().items()})
    gpu, perf = apply_profile(H100, DEFAULT_PERF, doubled)
    assert builtin_parameters(gpu, perf) == doubled
    assert gpu.power.dram_w == 2 * H100.power.dram_w
    assert perf.weight_bw_efficiency == 2 * DEFAULT_PERF.weight_bw_efficiency
    # Datasheet figures are the catalog's: a profile completes them, never replaces them.
    assert (gpu.memory_bandwidth_bytes_s, gpu.power_limits) == (
        H100.memory_bandwidth_bytes_s,
        H100.power_limits,
    )


def test_sim_server_flags_take_the_profile(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", BUILT_IN.model_copy(update={"kv_bw_efficiency": 0.5}))
    config = build_config(parse_args([MODEL, "--gpu-profile", str(path)]))
    assert config.perf.kv_bw_efficiency == 0.5
    assert config.gpu.key == "h100-80gb"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"gpu": "h100-80gb"}', "not a GPU profile"),
        ('{"kind": "jouletune-gpu-profile", "gpu": "h100-80gb"}', "parameters"),
    ],
)
def test_a_bad_profile_is_a_one_line_value_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_profile(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _sim_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jouletune", "sim-server", MODEL, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sim_server_refuses_a_missing_or_contradicted_profile(tmp_path: Path) -> None:
    missing = _sim_server("--gpu-profile", str(tmp_path / "none.json"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "cannot read" in missing.stderr
    path = _write(tmp_path / "p.json", BUILT_IN)
    contradicted = _sim_server("--gpu-profile", str(path), "--gpu", "a100-80gb")
    assert contradicted.returncode == 2
    assert "contradicts" in contradicted.stderr and "h100-80gb" in contradicted.stderr


def test_a_running_sim_server_draws_the_profiles_idle_power(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", BUILT_IN.model_copy(update={"idle_loaded_w": 157.0}))
    with sim_server(MODEL, "--gpu-profile", str(path)) as server:
        with urllib.request.urlopen(server.url + "/sim/gpus", timeout=5) as resp:
            gpus = json.loads(resp.read())["gpus"]
        # Power averages the last second, which may reach back before the server loaded.
        assert gpus[0]["power_w"] == pytest.approx(157.0, rel=0.01)
        assert "GPU profile" in server.log()
