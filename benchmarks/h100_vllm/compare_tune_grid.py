"""The real tune against the exhaustive grid over the same max_num_seqs values (H100, vLLM 0.24).

    python benchmarks/h100_vllm/compare_tune_grid.py [--results benchmarks/results/h100-vllm]

Reads `tune/` and `grid/` (the out folders of `benchmarks/h100_vllm/run_tune.sh`): the
grid's best feasible J/output-token from its measured trials (`trials.csv`), the tune's
recommendation, and both studies' server starts. Exits 0 when the recommendation is within 5%
of the grid's best feasible J/token and took at most half the grid's server starts, 1 when
not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

_RESULTS = Path(__file__).resolve().parents[1] / "results" / "h100-vllm"
_MAX_GAP = 0.05
_MAX_START_SHARE = 0.5


class _InputError(Exception):
    """Bad input; the message is one line."""


def _load(folder: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((folder / "recommendation.json").read_text())
    except (OSError, ValueError) as err:
        raise _InputError(f"{folder}: {err}") from None
    return data


def _grid_best(folder: Path) -> tuple[float, str]:
    """The lowest J/token among the grid's first measurements of feasible points.

    Checks that the study was a grid (`run.json`) and measured every max_num_seqs value.
    """
    try:
        run = json.loads((folder / "run.json").read_text())
        with (folder / "trials.csv").open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["state"] == "complete"]
        space = run["spec"]["searchSpace"]
        # The baseline's max_num_seqs joins the grid: read it from the baseline trial.
        baseline = {int(r["max_num_seqs"]) for r in rows if r["role"] == "baseline"}
        values = {*space["maxNumSeqs"], *baseline}
        sampler = run["spec"].get("sampler")
    except (OSError, ValueError, KeyError) as err:
        raise _InputError(f"{folder}: {err!r}") from None
    if sampler != "grid":
        raise _InputError(f"{folder}: sampler {sampler!r}, not an exhaustive grid")
    rows = [r for r in rows if r["role"] != "finalist"]  # repeats would bias the minimum low
    missing = values - {int(r["max_num_seqs"]) for r in rows}
    if missing:
        raise _InputError(f"{folder}: the grid never measured max_num_seqs {sorted(missing)}")
    feasible = [r for r in rows if r["feasible"] == "True"]
    if not feasible:
        raise _InputError(f"{folder}: the grid has no feasible trial")
    best = min(feasible, key=lambda r: float(r["energy_per_output_token_j"]))
    return float(best["energy_per_output_token_j"]), f"max_num_seqs {best['max_num_seqs']}"


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; 0 when the targets hold, 1 when not, 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=_RESULTS)
    args = parser.parse_args(argv)
    try:
        tune, grid = _load(args.results / "tune"), _load(args.results / "grid")
        best_j, best_label = _grid_best(args.results / "grid")
    except _InputError as err:
        print(f"compare_tune_grid: error: {err}", file=sys.stderr)
        return 2
    rec = tune.get("recommended")
    if not rec:
        print(f"compare_tune_grid: the tune recommended nothing ({tune.get('verdict')})")
        return 1
    gap = rec["energy_per_output_token_j"] / best_j - 1
    starts = tune["server_starts"] / grid["server_starts"]
    print(
        f"grid:  {grid['server_starts']} server starts, best feasible {best_label} "
        f"at {best_j:.5f} J/output-token"
    )
    print(
        f"tune:  {tune['server_starts']} server starts ({starts:.0%} of the grid's), "
        f"recommended {rec['label']} at {rec['energy_per_output_token_j']:.5f} J/output-token "
        f"({gap:+.1%} vs the grid's best; target within {_MAX_GAP:.0%})"
    )
    ok = gap <= _MAX_GAP and starts <= _MAX_START_SHARE
    print("targets hold" if ok else "targets MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
