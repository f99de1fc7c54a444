"""How the simulator's TTFT depends on the host CPU that runs vLLM's API server.

    python benchmarks/sim_host_speed.py [--factors 1.0 1.1 1.2 1.3 1.5] [--results DIR]

The API server's costs (`api_request_s`, `api_chunk_s`, `render_s_per_token`) are CPU time on
the serving host, measured or fitted on one H100 machine; another host's CPU runs them faster
or slower, while the GPU's step times stay. This replays the 1024/128 points of seed 41 (fresh
servers at N = 96, 128, 192 and 256, the `iter-*` and `intake-*` runs) with those three costs
scaled by each factor, and prints TTFT p50, ITL p50 and the window's output tok/s beside the
real runs of each point: what a slower API server alone does to a closed loop's waves. TTFT
p50 moves in whole prefill steps (~195 ms at N=256), not in proportion: the level a
fixed-length loop settles on is set by how its first returns reach the scheduler, and it
keeps it (docs/validation.md, "No single TTFT at fixed lengths"). Predictions, not
measurements.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import sim_fidelity as fidelity

from jouletune.sim import DEFAULT_PERF

_SEED = 41
_WORKLOAD = (1024, 128)


def main(argv: list[str] | None = None) -> int:
    """Print one line per factor; 2 if the results hold no seed-41 1024/128 point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.1, 1.2, 1.3, 1.5])
    parser.add_argument("--results", type=Path, default=fidelity._RESULTS)
    args = parser.parse_args(argv)
    runs: dict[int, list[fidelity.RealPoint]] = defaultdict(list)
    for p in fidelity.load_points(args.results):
        if p.seed == _SEED and (p.input_len, p.output_len) == _WORKLOAD:
            runs[p.max_num_seqs].append(p)
    if not runs:
        print(f"sim_host_speed: error: no 1024/128 seed-{_SEED} point in {args.results}")
        return 2
    for n, points in sorted(runs.items()):
        real = ", ".join(f"{p.figures.ttft_ms_p50:.0f}" for p in points)
        tok_s = ", ".join(f"{p.figures.output_tok_s:.0f}" for p in points)
        print(f"N={n}: real TTFT p50 {real} ms, {tok_s} tok/s ({len(points)} runs)")
    for factor in args.factors:
        perf = replace(
            DEFAULT_PERF,
            api_request_s=DEFAULT_PERF.api_request_s * factor,
            api_chunk_s=DEFAULT_PERF.api_chunk_s * factor,
            render_s_per_token=DEFAULT_PERF.render_s_per_token * factor,
        )
        cells = []
        for n, points in sorted(runs.items()):
            (sim,) = fidelity.simulate_server(points[:1], perf=perf)
            cells.append(
                f"N={n} {sim.ttft_ms_p50:.0f} ms (ITL {sim.itl_ms_p50:.1f}, "
                f"{sim.output_tok_s:.0f} tok/s)"
            )
        print(f"API-server CPU costs x{factor:g}: " + "; ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
