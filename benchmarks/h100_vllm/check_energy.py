"""Exporter energy vs an independent NVML read, for every committed real-vLLM point.

Each `jouletune bench` result took its window energy from `jouletune exporter`'s counter.
Beside it, `nvml_energy_log.py` logged the same GPU's total-energy counter every 50 ms in a
separate process. This script interpolates that log at each result's window edges and prints
both energies and their difference (issue 7: within 2%); a result in a subfolder is read
against the log in its own folder (`nvml_nN.csv.gz` for the server of N sequences, or one
`nvml.csv.gz` for a sweep's `cC.json` points), and one without a log is listed as such.
Results may be gzip'd (`result_files.py`).

    python benchmarks/h100_vllm/check_energy.py [benchmarks/results/h100-vllm]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from result_files import find_results, read_json, result_stem

_LIMIT_PCT = 2.0


def logged_window_energy_j(log: Path, result: dict[str, Any]) -> float:
    """The energy an `nvml_energy_log.py` log (gzip'd CSV) shows over a bench result's
    window: the counter interpolated at the window's edges."""
    with gzip.open(log, "rt") as f:
        rows = [(float(r["unix_s"]), float(r["energy_j"])) for r in csv.DictReader(f)]
    times, energies = (np.asarray(col) for col in zip(*rows, strict=True))
    window = result["window"]
    edges = np.interp([window["start_unix_s"], window["end_unix_s"]], times, energies)
    return float(edges[1] - edges[0])


def main(results_dir: Path) -> int:
    """Print one line per result; exit 1 if any differs by more than the limit, 2 if no
    result had a log to compare with."""
    print(f"{'point':<30}{'exporter J':>12}{'NVML log J':>12}{'diff %':>9}")
    worst = 0.0
    compared = 0
    patterns = ("**/n*_w*", "**/c[0-9]*", "**/jouletune_c*")
    for path in sorted(p for pattern in patterns for p in find_results(results_dir, pattern)):
        result = read_json(path)
        name = (path.parent / result_stem(path)).relative_to(results_dir).as_posix()
        servers = result["config"].get("server_max_num_seqs") or result["config"]["max_concurrency"]
        log = path.parent / f"nvml_n{servers}.csv.gz"  # one per server
        if not log.is_file():  # one log per run, named for it
            log = path.parent / f"nvml_{result_stem(path).removeprefix('jouletune_')}.csv.gz"
        if not log.is_file():  # one server for the folder's points (a sweep)
            log = path.parent / "nvml.csv.gz"
        if not log.is_file():  # a rerun without an independent log beside it
            print(f"{name:<30}{result['energy_j']:>12.1f}{'no log':>12}")
            continue
        independent_j = logged_window_energy_j(log, result)
        diff_pct = 100.0 * (result["energy_j"] - independent_j) / independent_j
        worst = max(worst, abs(diff_pct))
        compared += 1
        print(f"{name:<30}{result['energy_j']:>12.1f}{independent_j:>12.1f}{diff_pct:>+9.2f}")
    if not compared:
        print(f"check_energy: no result in {results_dir} has an NVML log", file=sys.stderr)
        return 2
    print(f"worst |diff| {worst:.2f}% over {compared} results (limit {_LIMIT_PCT}%)")
    return 0 if worst <= _LIMIT_PCT else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "results" / "h100-vllm",
        help="a folder of bench results and their NVML logs (default: results/h100-vllm)",
    )
    folder = parser.parse_args().results
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder")
    sys.exit(main(folder))
