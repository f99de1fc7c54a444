"""Recompute the diagnosis of every committed real H100 result from what the result holds.

    python benchmarks/diagnose_results.py

The H100 results (benchmarks/results/h100-vllm) served `/tmp/model`, a Llama-3.1-8B-shaped
dummy (its README), which is not on this machine: its shape is the catalog's
meta-llama/Llama-3.1-8B-Instruct. Each server's max_num_seqs is N of `nN_*.json` (the grid
files ran N clients against `--max-num-seqs N`) or the trial's row of `trials.csv`. Prints one
row per result and checks that the best 512-in/256-out point lies between 1 and 3 times the
physical floor (issue #14); exit 1 otherwise.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from jouletune.loadgen import BenchResult, Diagnosis, diagnose, inputs_of
from jouletune.models import model_arch

RESULTS = Path(__file__).resolve().parent / "results" / "h100-vllm"
DUMMY_SHAPE = "meta-llama/Llama-3.1-8B-Instruct"
FLOOR_RANGE = (1.0, 3.0)


@dataclass(frozen=True)
class Diagnosed:
    """One committed result and its recomputed diagnosis."""

    path: Path
    max_num_seqs: int | None
    result: BenchResult
    diagnosis: Diagnosis


def committed() -> list[Diagnosed]:
    """Every real H100 bench result under benchmarks/results/h100-vllm, diagnosed."""
    found = [(p, _grid_seqs(p)) for p in sorted(RESULTS.glob("n*_w*.json"))]
    for run in ("tune", "grid"):
        by_trial = _trial_seqs(RESULTS / run / "trials.csv")
        found += [
            (p, by_trial.get(int(p.parent.name)))
            for p in sorted((RESULTS / run / "trials").glob("*/result.json"))
        ]
    arch = model_arch(DUMMY_SHAPE)
    out = []
    for path, seqs in found:
        result = BenchResult.model_validate_json(path.read_text())
        config = result.config.model_copy(update={"server_max_num_seqs": seqs})
        result = result.model_copy(update={"config": config})
        out.append(
            Diagnosed(
                path, seqs, result, diagnose(inputs_of(result), model=arch, model_name=DUMMY_SHAPE)
            )
        )
    return out


def best_512_256(rows: list[Diagnosed]) -> Diagnosed:
    """The 512-in/256-out result with the fewest joules per output token."""
    same = [r for r in rows if _workload(r.result) == (512, 256) and r.result.valid]
    return min(same, key=lambda r: r.result.energy_per_output_token_j or float("inf"))


def _workload(result: BenchResult) -> tuple[int, int]:
    return result.config.random_input_len, result.config.random_output_len


def _grid_seqs(path: Path) -> int | None:
    match = re.match(r"n(\d+)_w", path.name)
    return int(match.group(1)) if match else None


def _trial_seqs(trials_csv: Path) -> dict[int, int]:
    with trials_csv.open() as f:
        return {int(row["number"]): int(row["max_num_seqs"]) for row in csv.DictReader(f)}


def main() -> int:
    rows = committed()
    columns = f"{'result':38} {'seqs':>5} {'J/token':>8} {'fill':>5} {'bound':>7} {'xfloor':>6}"
    print(columns + "  held back by")
    for r in rows:
        d = r.diagnosis
        fill = f"{d.batch_fill:.0%}" if d.batch_fill is not None else "-"
        print(
            f"{r.path.relative_to(RESULTS)!s:38} {r.max_num_seqs or '-':>5}"
            f" {r.result.energy_per_output_token_j or 0:8.4f} {fill:>5} {d.decode_bound or '-':>7}"
            f" {d.floor_distance or 0:6.2f}  {d.held_back_by}"
        )
    best = best_512_256(rows)
    distance = best.diagnosis.floor_distance
    ok = distance is not None and FLOOR_RANGE[0] <= distance <= FLOOR_RANGE[1]
    print(
        f"\nbest 512/256: {best.path.name}, {best.result.energy_per_output_token_j:.4f} J/token,"
        f" floor {best.diagnosis.floor_j_per_output_token:.4f} J/token"
        f" ({best.diagnosis.floor_source}), {distance:.2f}x the floor:"
        f" {'within' if ok else 'OUTSIDE'} {FLOOR_RANGE[0]:g}-{FLOOR_RANGE[1]:g}"
    )
    print(f"  {best.diagnosis.sentence}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
