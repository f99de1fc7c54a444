"""What jouletune knows of vLLM: argv building, flag merging and splitting, defaults, image."""

from __future__ import annotations

import pytest

from jouletune.engine import (
    IMAGE,
    VALIDATED_VERSION,
    ServeArgs,
    engine_defaults,
    installed_defaults,
    installed_version,
    merge_args,
    named_flags,
    split_flags,
    vllm_command,
)

GIB = 2**30


def test_serve_args_leave_unset_flags_to_vllm() -> None:
    args = ServeArgs(model="m", port=8000, max_num_seqs=64, extra=("--load-format", "dummy"))
    assert args.argv() == ["m", "--port", "8000", "--max-num-seqs", "64", "--load-format", "dummy"]
    assert args.shell() == "vllm serve m --port 8000 --max-num-seqs 64 --load-format dummy"


def test_the_api_server_count_is_a_flag_both_ways_and_left_to_vllm_when_unset() -> None:
    args = ServeArgs.parse(["m", "--api-server-count=2", "--max-num-seqs", "512"])
    assert (args.api_server_count, args.max_num_seqs, args.extra) == (2, 512, ())
    assert args.flags() == ["--max-num-seqs", "512", "--api-server-count", "2"]
    assert args.knobs_left_to_vllm() == [("--max-num-batched-tokens", "max_num_batched_tokens")]
    unset = ServeArgs(model="m", max_num_seqs=8, port=8000)
    assert [flag for flag, _ in unset.knobs_left_to_vllm()] == [
        "--max-num-batched-tokens",
        "--api-server-count",
    ]
    with pytest.raises(ValueError, match="--api-server-count needs an integer, got 'two'"):
        ServeArgs.parse(["m", "--api-server-count", "two"])


def test_underscore_spellings_are_vllms_flags_too() -> None:
    # vLLM's parser reads --max_num_seqs as --max-num-seqs.
    assert ServeArgs.parse(["m", "--max_num_seqs", "96", "--api_server_count=2"]) == ServeArgs(
        model="m", max_num_seqs=96, api_server_count=2
    )
    assert named_flags(["--enforce-eager", "--max_num_seqs=8", "-tp", "2"]) == [
        ("--max_num_seqs", "max_num_seqs"),
        ("-tp", "tensor_parallel_size"),
    ]
    assert merge_args(["m", "--max_num_seqs", "9"], ["--max-num-seqs", "64"]) == [
        "m",
        "--max-num-seqs",
        "64",
    ]


def test_merge_drops_a_knob_left_to_vllms_default() -> None:
    existing = ["m", "--api-server-count", "4", "--port", "8000", "--max-num-seqs", "256"]
    merged = merge_args(existing, ["--max-num-seqs", "512"], drop=["--api-server-count"])
    assert merged == ["m", "--port", "8000", "--max-num-seqs", "512"]


@pytest.mark.parametrize(
    ("name", "memory_gib", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 80, (1024, 8192)),
        ("NVIDIA H200", 141, (1024, 8192)),
        ("NVIDIA A100-SXM4-80GB", 80, (256, 2048)),
        ("NVIDIA L40S", 48, (256, 2048)),
    ],
)
def test_batch_defaults_follow_vllm_0_24_per_gpu(
    name: str, memory_gib: int, expected: tuple[int, int]
) -> None:
    # vLLM 0.24 EngineArgs.get_batch_defaults for `vllm serve`: >= 70 GiB and not an A100
    # gets 1024 seqs / 8192 tokens, other GPUs 256 / 2048.
    defaults = engine_defaults(gpu_name=name, gpu_memory_bytes=memory_gib * GIB)
    assert (defaults.max_num_seqs, defaults.max_num_batched_tokens) == expected
    assert defaults.version == VALIDATED_VERSION and defaults.source == "built-in"
    assert defaults.gpu_memory_utilization == 0.92 and defaults.enable_prefix_caching


def test_the_image_is_the_validated_release() -> None:
    assert f"vllm/vllm-openai:v{VALIDATED_VERSION}" == IMAGE


def test_merge_replaces_only_the_recommended_flags_in_either_spelling() -> None:
    existing = ["m", "--enforce-eager", "--max-num-seqs=256", "--port", "8000", "--max-model-len"]
    merged = merge_args(existing, ["--max-num-seqs", "64", "--max-model-len", "2048"])
    kept = ["m", "--enforce-eager", "--port", "8000"]
    assert merged == [*kept, "--max-num-seqs", "64", "--max-model-len", "2048"]


def test_merge_keeps_the_token_after_a_boolean_flag() -> None:
    merged = merge_args(["--enforce-eager", "m", "--max-num-seqs", "8"], ["--enforce-eager"])
    assert merged == ["m", "--max-num-seqs", "8", "--enforce-eager"]


def test_split_keeps_known_flags_and_takes_values_of_others() -> None:
    kept, other = split_flags(
        [
            "--enforce-eager",
            "m",
            "--seed",
            "-3",
            "--port",
            "1",
            "-x=2",
            "--dtype",
            "--trust-remote-code",
        ],
        {"--port"},
    )
    assert kept == ["m", "--port", "1"]
    assert other == ["--enforce-eager", "--seed", "-3", "-x=2", "--dtype", "--trust-remote-code"]


def test_vllm_command_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOULETUNE_VLLM_CMD", "jouletune sim-server")
    assert vllm_command() == ["jouletune", "sim-server"]


def test_without_vllm_installed_nothing_is_read() -> None:
    # CI has no vLLM; on a GPU host with vLLM, benchmarks/h100_vllm checks the real read.
    assert installed_version() is None and installed_defaults() is None
