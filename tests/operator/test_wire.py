"""Compact results: what crosses the 4 KiB termination message, and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jouletune.operator import CompactResult, ResultError
from jouletune.operator._wire import TERMINATION_MESSAGE_MAX_BYTES

STATS = {"mean": 10.123456789, "p50": 9.5, "p90": 12.25, "p99": 15.0}


def full_result(gpus: int) -> dict[str, object]:
    """A bench result shaped like `jouletune bench`'s (DESIGN.md keys)."""
    return {
        "valid": True,
        "invalid_reason": None,
        "completed": 1000,
        "failed": 0,
        "duration_s": 61.2,
        "window": {"start_s": 3.5, "end_s": 55.25, "output_tokens": 123456.0},
        "window_output_tokens": 123456.0,
        **{k: dict(STATS) for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")},
        "request_throughput": 16.3,
        "output_token_throughput": 4180.5,
        "energy_j": 123456.789,
        "energy_per_output_token_j": 0.123456789,
        "avg_power_w": 690.1,
        "power_cap_bound_fraction": 0.5,
        "avg_batch_size": 200.5,
        "gpus": [
            {
                "gpu": str(i),
                "uuid": "GPU-" + "f" * 36,
                "energy_j": 1e4,
                "avg_power_w": 690.0,
                "power_limit_w": 700.0,
                "power_cap_bound_fraction": 0.5,
                "model_name": "H100",
            }
            for i in range(gpus)
        ],
        "errors": ["x" * 500] * 10,
        "warnings": ["y" * 500] * 10,
    }


@pytest.mark.parametrize("gpus", [1, 8, 16])
def test_a_result_fits_the_termination_message_and_round_trips(gpus: int) -> None:
    compact = CompactResult.from_bench(full_result(gpus), power_limit_w=400.0)
    message = compact.to_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    back = CompactResult.from_message(message)
    assert back.energy_per_output_token_j == pytest.approx(0.123457)  # 6 significant digits
    assert back.tpot_ms is not None and back.tpot_ms.p90 == 12.25
    assert back.window_s == (3.5, 55.25) and back.power_limit_w == 400.0
    assert len(back.gpus) == gpus
    told = back.as_bench_result()
    assert told["window"] == {"start_s": 3.5, "end_s": 55.25}
    assert told["energy_per_output_token_j"] == back.energy_per_output_token_j


def test_per_gpu_detail_is_dropped_before_the_figures_when_too_long() -> None:
    many = CompactResult.from_bench(full_result(200))
    message = many.to_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    back = CompactResult.from_message(message)
    assert back.gpus == [] and back.energy_per_output_token_j is not None


def test_a_real_bench_result_file_compacts(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(full_result(1)))
    assert CompactResult.from_bench(json.loads(path.read_text())).ok


def test_failures_are_one_line_and_bounded() -> None:
    failure = CompactResult.failure("BenchFailed", "line one\nline two " + "z" * 1000)
    assert failure.message is not None and "\n" not in failure.message
    assert len(failure.message) <= 400
    assert not CompactResult.from_message(failure.to_message()).ok


@pytest.mark.parametrize("text", ["", "{", "[]", '{"v": 2, "ok": true}', '{"ok": "maybe"}'])
def test_anything_else_is_not_a_result(text: str) -> None:
    with pytest.raises(ResultError, match="not a trial result"):
        CompactResult.from_message(text)
