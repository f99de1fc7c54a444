"""The bench's printed summary: a real result's figures and its warnings reach the reader."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from jouletune.loadgen import BenchResult
from jouletune.loadgen._summary import print_summary

# 256/512 at 128 streams on an H200 whose API server fell behind: ITL mean 13.61 ms, TPOT 8.86.
H200_RUN = (
    Path(__file__).resolve().parents[2]
    / "benchmarks/results/h200-calibrate-heldout/held/c128_w256-512.json"
)


def test_warnings_are_printed_after_the_tables() -> None:
    result = BenchResult.model_validate_json(H200_RUN.read_text())
    assert result.warnings == []  # written before the bench compared chunks with tokens
    warned = result.model_copy(update={"warnings": ["first thing", "second thing"]})
    console = Console(record=True, width=200)
    print_summary(warned, console)
    text = console.export_text()
    assert "13.61" in text and "8.86" in text  # ITL and TPOT means, as measured
    assert text.index("E2EL") < text.index("warning: first thing") < text.index("second")
