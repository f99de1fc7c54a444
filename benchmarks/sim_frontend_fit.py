"""Fit the simulated API server's three costs on the first real H100 sweep, and only on it.

    python benchmarks/sim_frontend_fit.py [--request-ms 1.25 1.5 ...] [--chunk-us 50 ...]
                                          [--frontend-ms 13 14 ...]

The API-server model (`jouletune.sim._frontend`, docs/simulator.md) has three constants:
`api_request_s` (event-loop time to take in one request), `api_chunk_s` (event-loop time per
streamed chunk) and `frontend_s` (the fixed delay that does not occupy the loop). This script
replays the 12 points of the first session's sweep (`nN_w512-256` and `nN_w1024-128`, N = 1,
8, 32, 64, 128, 256: `benchmarks/results/h100-vllm/`) with every combination of the given
values, exactly as `benchmarks/sim_fidelity.py` does, and ranks the combinations:

1. J/output-token and ITL p50 must stay within 10% at all 12 points;
2. least trimmed squares of the TTFT p50 errors: the sum of the 9 smallest squared log
   errors of the 11 fitted points. TTFT p50 of a closed loop is a knife-edge statistic
   (whether a wave of returning requests stays together decides it), so a point caught on
   the other side of the edge must not drag the costs; the two worst are left out, and
   reported.

`n1_w512-256` is not fitted (`--exclude`): its TTFT p50 (35 ms) contradicts the same server's
`n1_w1024-128` (36 ms, for twice the prompt: prefilling 512 more tokens takes at least
8.6 ms at the H100's peak bf16 rate) and the calibration sweep's one stream at the same
512/256 (20.8 ms, `../shared/calibration/`), so it holds about 10 ms that neither the model
nor the other measurements explain. It is still replayed and reported.

The loss is flat along a ridge (a longer intake trades against a cheaper chunk and a longer
fixed delay), so the grid's single best combination is an accident of its spacing; the script
reports every combination within 5% of the best loss and their centroid, which is what
`DEFAULT_PERF` takes (rounded). The held-out points (the tune, the grid, the N = 96 and 192
servers, the rerun) take no part. Prints one line per combination, then the best, the
near-optimal set and its centroid. Takes about 10 s per combination on 2 CPUs.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sim_fidelity as fidelity  # a sibling script, not a package

from jouletune.sim import DEFAULT_PERF

_FIRST_SWEEP = {f"n{n}_w{w}" for n in (1, 8, 32, 64, 128, 256) for w in ("512-256", "1024-128")}
_KEPT = 9  # of the fitted points' squared TTFT errors, the smallest this many are summed
_EXCLUDED = ("n1_w512-256",)


_NEAR = 1.05  # combinations within this factor of the best loss are "near-optimal"


def evaluate(
    request_s: float, chunk_s: float, frontend_s: float, excluded: tuple[str, ...] = _EXCLUDED
) -> tuple[float, str]:
    """(trimmed TTFT loss, or inf when J or ITL misses 10%; one-line summary)."""
    perf = replace(
        DEFAULT_PERF, api_request_s=request_s, api_chunk_s=chunk_s, frontend_s=frontend_s
    )
    points = [p for p in fidelity.load_points(fidelity._RESULTS) if p.name in _FIRST_SWEEP]
    rows = fidelity.replay_all(points, perf=perf)
    errors = {p.name: fidelity.gate([(p, f)])[fidelity._key(p)] for p, f in rows}
    worst_j = max(abs(e[0]) for e in errors.values())
    worst_itl = max(abs(e[1]) for e in errors.values())
    squared = sorted(
        (math.log1p(e[2]) ** 2, name) for name, e in errors.items() if name not in excluded
    )
    loss = sum(s for s, _ in squared[:_KEPT])
    if max(worst_j, worst_itl) > 0.10:
        loss = math.inf
    left_out = ", ".join(f"{n} {errors[n][2]:+.0%}" for _, n in squared[_KEPT:])
    within = sum(abs(e[2]) <= 0.25 for e in errors.values())
    line = (
        f"request {request_s * 1e3:.3f} ms, chunk {chunk_s * 1e6:.0f} us, frontend "
        f"{frontend_s * 1e3:.1f} ms: loss {loss:.3f}, TTFT within 25% at {within}/12, worst J "
        f"{worst_j:.1%}, ITL {worst_itl:.1%}; left out: {left_out}"
    )
    return loss, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--request-ms", type=float, nargs="+", default=[1.625, 1.75, 1.875])
    parser.add_argument("--chunk-us", type=float, nargs="+", default=[45.0, 50.0, 55.0])
    parser.add_argument("--frontend-ms", type=float, nargs="+", default=[7.0, 8.0, 9.0, 10.0])
    parser.add_argument("--exclude", nargs="*", default=list(_EXCLUDED), help="points not fitted")
    args = parser.parse_args(argv)
    results = []
    for request_ms, chunk_us, frontend_ms in itertools.product(
        args.request_ms, args.chunk_us, args.frontend_ms
    ):
        loss, line = evaluate(
            request_ms * 1e-3, chunk_us * 1e-6, frontend_ms * 1e-3, tuple(args.exclude)
        )
        print(line, flush=True)
        results.append((loss, (request_ms, chunk_us, frontend_ms), line))
    best = min(results)
    print(f"\nbest: {best[2]}")
    near = [r for r in results if r[0] <= best[0] * _NEAR]
    print(f"within {_NEAR - 1:.0%} of the best loss ({len(near)}):")
    for _, _, line in sorted(near):
        print(f"  {line}")
    request_ms, chunk_us, frontend_ms = (statistics.mean(r[1][i] for r in near) for i in range(3))
    print(
        f"centroid: request {request_ms:.3f} ms, chunk {chunk_us:.1f} us, "
        f"frontend {frontend_ms:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
