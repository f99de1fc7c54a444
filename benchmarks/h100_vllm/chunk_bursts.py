"""How a step's chunks reach the client: the bursts in a real run's chunk times.

    python benchmarks/h100_vllm/chunk_bursts.py RESULT.json[.gz] [--gap-ms 1.5]

RESULT is a `jouletune bench --save-detailed` result. Every chunk's arrival at the client
(first token, then each inter-token gap) inside the steady-state window is pooled and cut
into bursts wherever no chunk arrived for `--gap-ms`: one engine step's chunks arrive as one
burst when the API server writes them one after another. Prints the bursts' sizes and
durations (the pace of the writing, per chunk) and where in its burst each first token
arrived (0: with the burst's first chunk, 1: with its last), which says in what order the
API server writes a step's new requests.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from result_files import read_json  # benchmarks/


def _quantiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"{q[0]:.2f} / {statistics.median(values):.2f} / {q[8]:.2f}"


def _chunk_times(requests: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Every request's first-token time, and the arrival of every chunk (first ones included)."""
    firsts, chunks = [], []
    for r in requests:
        t = r["first_token_unix_s"]
        firsts.append(t)
        chunks.append(t)
        for gap_ms in r["itl_ms"]:
            t += gap_ms / 1e3
            chunks.append(t)
    return firsts, chunks


def _bursts(times: list[float], gap_s: float) -> list[list[float]]:
    """Sorted `times` cut wherever nothing arrived for `gap_s`."""
    bursts: list[list[float]] = [[times[0]]]
    for t in times[1:]:
        if t - bursts[-1][-1] > gap_s:
            bursts.append([])
        bursts[-1].append(t)
    return bursts


def main(argv: list[str] | None = None) -> int:
    """Print the run's chunk bursts; 2 on a result without per-request chunk times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--gap-ms", type=float, default=1.5)
    args = parser.parse_args(argv)
    result = read_json(args.result)
    requests = [r for r in result.get("requests") or [] if r.get("success")]
    if not requests or "itl_ms" not in requests[0]:
        print(f"chunk_bursts: {args.result}: no per-request chunk times", file=sys.stderr)
        return 2
    start, end = result["window"]["start_unix_s"], result["window"]["end_unix_s"]
    firsts, chunks = _chunk_times(requests)
    bursts = _bursts(sorted(t for t in chunks if start <= t <= end), args.gap_ms / 1e3)
    streams = int(result["config"]["max_concurrency"])
    least = max(2, streams // 2)  # a step's worth, not a straggler
    full = [b for b in bursts if len(b) >= least]
    if len(full) < 2:
        print(f"chunk_bursts: {args.result}: no bursts of {least} chunks or more", file=sys.stderr)
        return 2
    print(
        f"{args.result}: {streams} streams, {len(bursts)} bursts, {len(full)} of at least "
        f"{least} chunks: size p50 {statistics.median(len(b) for b in full):.0f}; "
        f"duration ms p10/p50/p90 {_quantiles([(b[-1] - b[0]) * 1e3 for b in full])}; "
        f"µs per chunk p10/p50/p90 "
        f"{_quantiles([(b[-1] - b[0]) / (len(b) - 1) * 1e6 for b in full])}"
    )
    starts = [b[0] for b in bursts]
    positions = []
    for t in firsts:
        if start <= t <= end:
            burst = bursts[bisect.bisect_right(starts, t) - 1]
            if len(burst) >= least:
                positions.append((t - burst[0]) / (burst[-1] - burst[0]))
    if len(positions) >= 10:
        print(
            f"first tokens in a full burst: {len(positions)}, position in it (0 first, 1 last) "
            f"p10/p50/p90 {_quantiles(positions)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
