"""Prompts built and counted with a real BPE tokenizer, end to end: `jouletune bench` against a
`jouletune sim-server --tokenizer` counting them as `vllm serve` would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loadgen.conftest import (
    SHORT_RUN,
    SimStack,
    bench_args,
    generated_tokens,
    run_bench_cli,
    sim_stack,
)
from tests.tokenizers import DEEPSEEK_DIR, deepseek


@pytest.fixture(scope="module")
def counting() -> Iterator[SimStack]:
    """A sim-server that counts prompt tokens with DeepSeek-V3's tokenizer, and its exporter."""
    deepseek()  # fails loudly where the tokenizer was not installed
    with sim_stack("--tokenizer", str(DEEPSEEK_DIR)) as s:
        yield s


def _bench(stack: SimStack, tmp_path: Path, *extra: str, valid: bool = True) -> dict[str, object]:
    run = run_bench_cli(
        bench_args(
            stack.sim.url,
            *SHORT_RUN,
            "--exporter-url", stack.exporter.url,
            "--max-concurrency", "8",
            "--num-prompts", "40",
            "--random-input-len", "512",
            "--random-output-len", "16",
            *extra,
            result=tmp_path / "result.json",
        )
    )  # fmt: skip
    assert run.returncode == (0 if valid else 1), run.stderr
    assert run.result is not None
    return run.result


@pytest.mark.parametrize("named", [True, False], ids=["--tokenizer", "the server's"])
def test_prompts_reach_the_server_at_exactly_the_requested_length(
    counting: SimStack, tmp_path: Path, named: bool
) -> None:
    extra = ("--tokenizer", str(DEEPSEEK_DIR)) if named else ()
    workload = _bench(counting, tmp_path, *extra)["workload"]
    assert isinstance(workload, dict)
    assert workload["tokenizer"] == str(DEEPSEEK_DIR)
    assert workload["mean_requested_prompt_tokens"] == 512
    assert workload["mean_prompt_tokens"] == 512  # what the server counted (usage)
    assert workload["prompt_tokens_deviation"] == 0


def test_prompts_built_for_another_tokenizer_are_flagged(
    counting: SimStack, tmp_path: Path
) -> None:
    result = _bench(counting, tmp_path, "--tokenizer", "words", valid=False)
    workload = result["workload"]
    assert isinstance(workload, dict)
    # 512 words `t<id>` are about three BPE tokens each: the workload nobody asked for.
    assert workload["prompt_tokens_deviation"] > 1.5
    checks = result["checks"]
    assert isinstance(checks, list)
    failing = [c["name"] for c in checks if c["verdict"] == "fail"]
    assert failing == ["prompt_tokens_as_requested"]
    reason = result["invalid_reason"]
    assert isinstance(reason, str) and "another tokenizer than the server's" in reason


def test_a_tokenizer_that_cannot_load_is_one_line_before_any_request(
    counting: SimStack, tmp_path: Path
) -> None:
    before = generated_tokens(counting.sim.url)
    missing = str(tmp_path / "no-such-tokenizer")
    run = run_bench_cli(
        bench_args(
            counting.sim.url, "--tokenizer", missing, "--num-prompts", "4",
            result=tmp_path / "r.json",
        )
    )  # fmt: skip
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and "no such file or directory" in lines[0]
    assert generated_tokens(counting.sim.url) == before
