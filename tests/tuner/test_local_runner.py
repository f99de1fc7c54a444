"""The local runner's process handling, with `jouletune sim-server` standing in for `vllm serve`
(same flags) and the exporter reading the sim's GPUs: start, health wait, measure, stop, and the
ways a server fails to start (crash, OOM, hang, busy port)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from jouletune.engine import vllm_command
from jouletune.tuner import (
    LocalRunner,
    Point,
    Role,
    RunnerError,
    StartError,
    TrialPlan,
    parse_spec,
)
from tests.procs import free_port
from tests.validity import SHORT_RUN_VALIDITY

SIM_AS_VLLM = [sys.executable, "-m", "jouletune", "sim-server"]
SIM_EXPORTER = [sys.executable, "-m", "jouletune", "exporter", "--sim", "{server_url}"]
SERVER = Point(tensor_parallel_size=1, max_num_seqs=32)


def _spec(**engine: Any) -> Any:
    return parse_spec(
        {
            "backend": "vllm",
            "engine": {"maxModelLen": 512, "args": ["--load-format", "dummy"], **engine},
            "gpu": {"readOnly": True},
            "workload": {
                "inputLen": 64,
                "outputLen": 16,
                "maxConcurrency": 8,
                "numPrompts": 200,
                "durationS": 1.5,
            },
            "validity": SHORT_RUN_VALIDITY,
        }
    )


def _runner(port: int, command: list[str] = SIM_AS_VLLM, **engine: Any) -> LocalRunner:
    return LocalRunner(
        spec=_spec(**engine),
        read_only=True,
        port=port,
        server_command=command,
        exporter_command=SIM_EXPORTER,
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_measure_stop(tmp_path: Path) -> None:
    port = free_port()
    runner = _runner(port)
    plan = TrialPlan(number=0, role=Role.SEARCH, point=SERVER)

    async def scenario() -> tuple[Any, Any, int]:
        async with runner.server(SERVER, log_dir=tmp_path / "srv") as server:
            assert server.alive()
            first = await server.measure(plan, trial_dir=tmp_path / "t0")
            # A second point on the same server: the bench waits for the queues to drain.
            second = await server.measure(plan, trial_dir=tmp_path / "t1")
            pid = server.server.pid
        return first, second, pid

    first, second, pid = asyncio.run(scenario())
    for outcome in (first, second):
        assert outcome.fail_reason is None
        assert outcome.figures is not None and outcome.figures.energy_per_output_token_j > 0
    command = (tmp_path / "srv" / "server.log").read_text().splitlines()[0]
    assert " sim-server meta-llama/Llama-3.1-8B-Instruct --host 127.0.0.1 " in command
    for flag in ("--port " + str(port), "--max-num-seqs 32", "--tensor-parallel-size 1",
                 "--max-model-len 512", "--load-format dummy"):  # fmt: skip
        assert flag in command
    assert (tmp_path / "t0" / "server.log").resolve() == (tmp_path / "srv" / "server.log")
    assert _gone(pid)
    assert not _listening(port)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("print('torch.OutOfMemoryError: CUDA out of memory'); raise SystemExit(1)", "OOM"),
        ("raise SystemExit(3)", "server exited (exit code 3)"),
    ],
)
def test_crash_on_start_is_a_reason(tmp_path: Path, code: str, reason: str) -> None:
    runner = _runner(free_port(), [sys.executable, "-c", code])

    async def scenario() -> None:
        async with runner.server(SERVER, log_dir=tmp_path):
            raise AssertionError("a crashed server must not be yielded")

    with pytest.raises(StartError, match=re.escape(reason)) as info:
        asyncio.run(scenario())
    assert "\n" not in str(info.value)


def test_hung_server_times_out_and_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os,time; open({str(pid_file)!r},'w').write(str(os.getpid())); time.sleep(600)"
    runner = _runner(free_port(), [sys.executable, "-c", code], startupTimeoutS=2)

    async def scenario() -> None:
        async with runner.server(SERVER, log_dir=tmp_path):
            raise AssertionError("a hung server must not be yielded")

    with pytest.raises(StartError, match=r"server not healthy on .*/health within 2 s"):
        asyncio.run(scenario())
    assert _gone(int(pid_file.read_text()))


def test_busy_port_is_a_reason(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        runner = _runner(port)

        async def scenario() -> None:
            async with runner.server(SERVER, log_dir=tmp_path):
                raise AssertionError("must not start on a busy port")

        with pytest.raises(StartError, match=f"port {port} is busy"):
            asyncio.run(scenario())
    assert not (tmp_path / "server.log").exists()  # nothing was started


def test_server_command_without_vllm_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOULETUNE_VLLM_CMD", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert vllm_command()[1:] == ["-m", "vllm.entrypoints.cli.main", "serve"]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _capped_runner() -> LocalRunner:
    spec = parse_spec({"backend": "vllm", "searchSpace": {"powerLimitW": [300]}})
    return LocalRunner(spec=spec, port=free_port(), server_command=SIM_AS_VLLM)


def test_preflight_refuses_caps_without_permission() -> None:
    import pynvml

    from tests.gpu.nvml_fake import fake_nvml, nvml_error

    with fake_nvml(num_gpus=1) as nvml:
        nvml.nvmlDeviceSetPowerManagementLimit.side_effect = nvml_error(
            pynvml.NVML_ERROR_NO_PERMISSION
        )
        with pytest.raises(RunnerError, match="run as root or with --read-only"):
            asyncio.run(_capped_runner().preflight([300.0]))
        # The permission probe writes the limit the GPU already has, nothing else.
        for call in nvml.nvmlDeviceSetPowerManagementLimit.call_args_list:
            assert call.args[1] == 700_000


def test_preflight_refuses_visible_devices_that_leave_too_few_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.gpu.nvml_fake import fake_nvml

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    spec = parse_spec(
        {"backend": "vllm", "gpu": {"count": 2}, "searchSpace": {"tensorParallelSize": [1, 2]}}
    )
    runner = LocalRunner(spec=spec, port=free_port(), server_command=SIM_AS_VLLM)
    with (
        fake_nvml(num_gpus=2),
        pytest.raises(
            RunnerError,
            match=r"^tensor parallelism 2 needs 2 GPUs, but CUDA_VISIBLE_DEVICES=1 leaves 1 ",
        ),
    ):
        asyncio.run(runner.preflight([]))


def test_preflight_refuses_caps_outside_the_range() -> None:
    from tests.gpu.nvml_fake import fake_nvml

    with fake_nvml(num_gpus=1), pytest.raises(RunnerError, match=r"\[100.0\] outside GPU 0"):
        asyncio.run(_capped_runner().preflight([100.0]))


# A simulated two-GPU node: the stand-in engine honours CUDA_VISIBLE_DEVICES and
# NVIDIA_VISIBLE_DEVICES as vLLM does, and its /sim/gpus stands in for the node's NVML.
SIM_NODE_AS_VLLM = [*SIM_AS_VLLM, "--node-gpus", "2"]


@pytest.mark.parametrize(
    ("env", "engine_gpu"),
    [
        ({}, 0),
        ({"CUDA_VISIBLE_DEVICES": "1"}, 1),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-sim-h100-80gb-0001"}, 1),
    ],
)
def test_tp1_on_a_two_gpu_node_counts_one_gpus_energy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], engine_gpu: int
) -> None:
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the engine and the runner read the same environment
    runner = LocalRunner(
        spec=_spec(),
        read_only=True,
        port=free_port(),
        server_command=SIM_NODE_AS_VLLM,
        exporter_command=SIM_EXPORTER,
        sim_gpus_url="{server_url}",
    )
    plan = TrialPlan(number=0, role=Role.SEARCH, point=SERVER)

    async def scenario() -> tuple[Any, dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with runner.server(SERVER, log_dir=tmp_path / "srv") as server:
            outcome = await server.measure(plan, trial_dir=tmp_path / "t0")
            result = json.loads((tmp_path / "t0" / "result.json").read_text())
            window = result["window"]
            query = f"start_unix_s={window['start_unix_s']}&end_unix_s={window['end_unix_s']}"
            truth = _get_json(f"{server.server.url}/sim/truth?{query}")
            node = _get_json(f"{server.server.url}/sim/gpus")["gpus"]
        return outcome, result, truth, node

    outcome, result, truth, node = asyncio.run(scenario())
    assert outcome.fail_reason is None, outcome.fail_reason
    assert [g["index"] for g in node] == [0, 1], "a two-GPU node"
    (gpu,) = result["gpus"]
    assert gpu["uuid"] == f"GPU-sim-h100-80gb-{engine_gpu:04d}"
    (engine,) = truth["gpus"]  # the simulator's truth: the engine's GPU only
    assert engine["index"] == engine_gpu
    # The other GPU idles all along; what it drew in the window would show if it were counted.
    idle_w = node[1 - engine_gpu]["power_w"]
    other_j = idle_w * (result["window"]["end_unix_s"] - result["window"]["start_unix_s"])
    assert other_j > 0.1 * engine["energy_j"]
    assert result["energy_j"] == pytest.approx(engine["energy_j"], rel=0.05)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())
