"""`jouletune sim-server`'s command line: vLLM's flags, defaults, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jouletune.gpu._visible import CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES
from jouletune.models import MODEL_CATALOG
from jouletune.sim.cli import build_config, parse_args, place_gpus

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def test_positional_model_like_vllm_serve_and_unknown_flags_ignored() -> None:
    args = parse_args(
        [LLAMA_8B, "--load-format", "dummy", "--enforce-eager", "--port", "9001", "--seed=3"]
    )
    assert args.model == LLAMA_8B
    assert args.port == 9001
    assert args.ignored == ("--load-format", "dummy", "--enforce-eager", "--seed=3")


def test_boolean_vllm_flag_does_not_swallow_the_model() -> None:
    args = parse_args(["--enforce-eager", LLAMA_8B, "--max-num-seqs", "32", "-tp", "2"])
    assert (args.model, args.max_num_seqs, args.tensor_parallel_size) == (LLAMA_8B, 32, 2)


def test_known_flags_parse_into_the_engine_config() -> None:
    args = parse_args(
        [
            "--model",
            LLAMA_8B,
            "--max-num-seqs",
            "64",
            "--tensor-parallel-size",
            "2",
            "--max-num-batched-tokens",
            "4096",
            "--max-model-len",
            "8192",
            "--gpu-memory-utilization",
            "0.85",
            "--served-model-name",
            "llama",
            "--gpu",
            "h200-141gb",
            "--power-limit",
            "450",
        ]
    )
    assert args.served_model_name == "llama"
    assert args.power_limit_w == 450.0
    config = build_config(args)
    assert config.max_num_seqs == 64
    assert config.tensor_parallel_size == 2
    assert config.max_num_batched_tokens == 4096
    assert config.max_model_len == 8192
    assert config.gpu_memory_utilization == 0.85
    assert config.gpu.key == "h200-141gb"


def test_defaults_are_the_engines_for_the_simulated_gpu() -> None:
    config = build_config(parse_args([LLAMA_8B, "--max-model-len", "4096"]))
    assert (config.max_num_seqs, config.max_num_batched_tokens) == (1024, 8192)
    assert config.enable_prefix_caching
    config = build_config(parse_args([LLAMA_8B, "--gpu", "a100-80gb", "--max-model-len", "4096"]))
    assert (config.max_num_seqs, config.max_num_batched_tokens) == (256, 2048)
    assert config.gpu_memory_utilization == 0.92


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nobody/no-model"], "unknown model 'nobody/no-model'"),
        (["./no/such/dir"], "unknown model './no/such/dir'"),
        ([LLAMA_8B, "--gpu", "tpu-v9"], "unknown GPU 'tpu-v9'"),
        ([LLAMA_8B, "--power-limit", "900"], "outside"),
        (["meta-llama/Llama-3.1-70B-Instruct"], "does not fit"),
        ([LLAMA_8B, "--max-num-seqs", "abc"], "invalid int value"),
        ([LLAMA_8B, "--tensor-parallel-size", "3"], "not divisible"),
        ([], "no model given"),
        ([LLAMA_8B, "-tp", "2", "--node-gpus", "1"], "--node-gpus must be from"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(argv: list[str], message: str) -> None:
    # Offline: an unknown id is looked up in the Hugging Face cache only, not retried online.
    proc = subprocess.run(
        [sys.executable, "-m", "jouletune", "sim-server", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    if "unknown model" in message:
        assert all(hf_id in lines[0] for hf_id in MODEL_CATALOG)


def _engine_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("env", "engine"),
    [
        ({}, [0]),
        ({CUDA_VISIBLE_DEVICES: "1"}, [1]),
        ({CUDA_VISIBLE_DEVICES: "GPU-sim-h100-80gb-0002"}, [2]),
        ({NVIDIA_VISIBLE_DEVICES: "1,2", CUDA_VISIBLE_DEVICES: "1"}, [2]),
    ],
)
def test_on_a_node_of_gpus_the_engine_takes_the_visible_ones(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], engine: list[int]
) -> None:
    _engine_env(monkeypatch, env)
    args = parse_args([LLAMA_8B, "--node-gpus", "3", "--max-model-len", "4096"])
    node, gpus = place_gpus(args, build_config(args))
    assert [g.index for g in node] == [0, 1, 2]
    assert [g.index for g in gpus] == engine
    # Only the engine's GPUs hold memory and draw the loaded idle power.
    assert [g.index for g in node if g.sample().memory_used_bytes > 0] == engine
    assert [g.index for g in node if g.idle_power_w == g.model.idle_loaded_w] == engine


def test_without_node_gpus_the_shells_variables_do_not_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sim backend's server is a node of its own; a CUDA_VISIBLE_DEVICES meant for the
    # machine's real GPUs must not move (or break) it.
    _engine_env(monkeypatch, {CUDA_VISIBLE_DEVICES: "3"})
    args = parse_args([LLAMA_8B, "-tp", "2", "--max-model-len", "4096"])
    node, gpus = place_gpus(args, build_config(args))
    assert [g.index for g in node] == [g.index for g in gpus] == [0, 1]


def test_visible_devices_the_node_lacks_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _engine_env(monkeypatch, {CUDA_VISIBLE_DEVICES: "5"})
    proc = subprocess.run(
        [sys.executable, "-m", "jouletune", "sim-server", LLAMA_8B, "--node-gpus", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "jouletune sim-server: error: CUDA_VISIBLE_DEVICES=5: there is no CUDA device 5; this "
        "process may use 2 GPU(s) (NVML 0=GPU-sim-h100-80gb-0000, 1=GPU-sim-h100-80gb-0001)"
    )
