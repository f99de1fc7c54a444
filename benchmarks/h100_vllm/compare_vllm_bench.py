"""What a tokenizer_session.sh run on the real H100 shows (default:
benchmarks/results/h100-tokenizer): prompt lengths as vLLM counted them, `jouletune bench`
against `vllm bench serve`, and energy read through dcgm-exporter's names against an
independent NVML log.

    python benchmarks/h100_vllm/compare_vllm_bench.py [DIR]

Issue #12's bounds: prompt tokens counted by vLLM within 1% of those requested at 128, 512
and 1536; TTFT p50, TPOT p50 and output tokens/s within 3% of vLLM's own client on the same
server and workload. Every client figure is compared over the whole run (ramp-up and drain
included, as vLLM measures it: the result's `run` section); results written before the `run`
section had latencies compare jouletune's steady-state cohort instead, and say so. A folder
`repeat-c128/` beside them holds a second pair at 128 streams: how far vLLM's own client moves
between two runs is the floor under any comparison between clients; `reps/` holds the pair
repeated (each client's runs in alternating order, fixed and varied lengths), compared by the
median over runs of each client's figure. Issue #14's: the dcgm
path's window energy within 1% of the NVML log's (`dcgm_c128.json`, `nvml_dcgm.csv.gz`, also
in `dcgm-repeat/`). Exit 1 when a bound is missed.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from check_energy import logged_window_energy_j  # this script's folder

DEFAULT = Path(__file__).resolve().parents[1] / "results" / "h100-tokenizer"
LATENCY_BOUND = 0.03
LENGTH_BOUND = 0.01
ENERGY_BOUND = 0.01


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _pairs(out: Path, c: int) -> list[tuple[str, float, float]]:
    return _figures(_load(out / f"jouletune_c{c}.json"), _load(out / f"vllm_c{c}.json"))


def _figures(jt: dict[str, Any], vl: dict[str, Any]) -> list[tuple[str, float, float]]:
    run = jt["run"]
    scope = "run" if run.get("ttft_ms") else "cohort"
    latency = run if scope == "run" else jt
    return [
        (f"TTFT p50 ms ({scope})", float(latency["ttft_ms"]["p50"]), float(vl["median_ttft_ms"])),
        (f"TPOT p50 ms ({scope})", float(latency["tpot_ms"]["p50"]), float(vl["median_tpot_ms"])),
        ("output tok/s", float(run["output_token_throughput"]), float(vl["output_throughput"])),
    ]


def _lengths(out: Path) -> bool:
    ok = True
    if not (out / "len128.json").is_file():
        return ok
    print("prompt tokens: requested -> counted by vLLM (usage.prompt_tokens)")
    for length in (128, 512, 1536):
        w = _load(out / f"len{length}.json")["workload"]
        dev = float(w["prompt_tokens_deviation"])
        ok &= abs(dev) <= LENGTH_BOUND
        asked, counted = w["mean_requested_prompt_tokens"], w["mean_prompt_tokens"]
        print(f"  {length:5d}: {asked:.1f} -> {counted:.1f} ({dev:+.2%}, {w['tokenizer']})")
    return ok


def _clients(out: Path, label: str, repeated: set[int]) -> bool:
    """One run of each client per concurrency; at a concurrency in `repeated` the bound is
    judged on the medians of the repeated pairs (`reps/`) instead, one run being noise there."""
    ok = True
    for c in (16, 128):
        if not (out / f"vllm_c{c}.json").is_file():
            continue
        judged = c not in repeated
        note = "" if judged else " (one run each: the bound is judged on reps/ below)"
        print(f"{label}concurrency {c}: jouletune bench vs vllm bench serve{note}")
        for name, mine, theirs in _pairs(out, c):
            diff = mine / theirs - 1
            ok &= abs(diff) <= LATENCY_BOUND or not judged
            print(f"  {name:22} {mine:10.2f} {theirs:10.2f}  {diff:+.2%}")
    return ok


def _vllm_between_runs(first: Path, second: Path) -> None:
    a, b = _load(first / "vllm_c128.json"), _load(second / "vllm_c128.json")
    print("vllm bench serve, concurrency 128, two runs (other prompt seeds), second vs first")
    for key in ("median_ttft_ms", "median_tpot_ms", "output_throughput"):
        print(f"  {key:22} {a[key]:10.2f} {b[key]:10.2f}  {b[key] / a[key] - 1:+.2%}")


def _reps(folder: Path) -> bool:
    """Each workload's repeated pair: every run, then the medians over runs compared."""
    runs: dict[str, list[list[tuple[str, float, float]]]] = defaultdict(list)
    for path in sorted(folder.glob("jouletune_*.json")):
        workload = re.sub(r"_\d+$", "", path.stem.removeprefix("jouletune_"))
        vllm = folder / path.name.replace("jouletune_", "vllm_", 1)
        runs[workload].append(_figures(_load(path), _load(vllm)))
    ok = True
    for workload, pairs in runs.items():
        print(f"repeated pair {workload} ({len(pairs)} runs): per run jouletune / vllm")
        for i, (name, *_) in enumerate(pairs[0]):
            mine = [p[i][1] for p in pairs]
            theirs = [p[i][2] for p in pairs]
            diff = statistics.median(mine) / statistics.median(theirs) - 1
            ok &= abs(diff) <= LATENCY_BOUND
            each = "  ".join(f"{m:.1f}/{t:.1f}" for m, t in zip(mine, theirs, strict=True))
            spread = f"{_spread(mine):.1%} / {_spread(theirs):.1%}"
            print(f"  {name:22} {each}   medians {diff:+.2%}, spread {spread}")
    return ok


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def _dcgm(out: Path) -> bool:
    result = _load(out / "dcgm_c128.json")
    window = result["window"]
    independent = logged_window_energy_j(out / "nvml_dcgm.csv.gz", result)
    diff = result["energy_j"] / independent - 1
    print(
        f"dcgm path vs NVML log ({out.name}): {result['energy_j']:.1f} J vs {independent:.1f} J "
        f"over {window['duration_s']:.1f} s, {diff:+.2%}"
    )
    return bool(abs(diff) <= ENERGY_BOUND)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    repeated = {int(p.stem.split("_")[1][1:]) for p in (out / "reps").glob("vllm_c*.json")}
    ok = _lengths(out) & _clients(out, "", repeated)
    repeat = out / "repeat-c128"
    if repeat.is_dir():
        ok &= _clients(repeat, "repeat, ", repeated)
        _vllm_between_runs(out, repeat)
    if (out / "reps").is_dir():
        ok &= _reps(out / "reps")
    for folder in (out, out / "dcgm-repeat"):
        if (folder / "dcgm_c128.json").is_file():
            ok &= _dcgm(folder)
    print("all within bounds" if ok else "OUTSIDE a bound")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
