"""How the simulator's latencies depend on the host CPU that runs vLLM.

    python benchmarks/sim_host_speed.py [--factors 1.0 1.1 1.2 1.3 1.5] [--results DIR]
    python benchmarks/sim_host_speed.py --scale launch --factors 0.85 1.0 1.2 1.35 \
        --points varied-b/n128_w512-256 tokenizer/fixed-client/jouletune_c128_rr0.5_s41

Two sets of the simulator's constants are CPU time on the serving host, measured or fitted on
machines of one H100 pool whose hosts differ; another host runs them faster or slower, while
the GPU's step times stay:

* `--scale api` (the default): the API server's costs (`api_request_s`, `api_chunk_s`,
  `render_s_per_token`). By default this replays the 1024/128 points of seed 41 (fresh
  servers at N = 8, 96, 128, 192 and 256, the `iter-*` and `intake-*` runs), the first run
  of each N, and prints TTFT p50, ITL p50 and the window's output tok/s, each run's real
  figures first: what a slower API server alone does to a closed loop's waves. TTFT p50
  moves in whole prefill steps (~195 ms at N=256), not in proportion: the level a
  fixed-length loop settles on is set by how its first returns reach the scheduler, and it
  keeps it (docs/validation.md, "No single TTFT at fixed lengths").
* `--scale launch`: the engine core's time to launch a step too large for a CUDA graph
  (`eager_launch_*`), which vLLM's iteration log measures (h100_vllm/engine_host_time.py).
  Where lengths vary, ITL p50 sits between decode-only gaps and the longer gaps after a
  prefilling step, and this launch time decides which (docs/validation.md, "The engine host,
  not the vocabulary or the request log").

`--points` names the runs to replay (as sim_fidelity.py prints them), each after the runs its
server measured before it. Predictions, not measurements.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import sim_fidelity as fidelity

from jouletune.sim import DEFAULT_PERF, PerfConstants

_SEED = 41
_WORKLOAD = (1024, 128)
_SCALED = {
    "api": ("api_request_s", "api_chunk_s", "render_s_per_token"),
    "launch": ("eager_launch_s", "eager_launch_per_token_s", "eager_launch_per_seq_s"),
}


def scaled(scale: str, factor: float) -> PerfConstants:
    """The built-in constants with the host costs `scale` names multiplied by `factor`."""
    return replace(DEFAULT_PERF, **{k: getattr(DEFAULT_PERF, k) * factor for k in _SCALED[scale]})


def _default_points(points: list[fidelity.RealPoint]) -> list[str]:
    """The first seed-41 1024/128 run of each N."""
    first: dict[int, fidelity.RealPoint] = {}
    for p in sorted(points, key=lambda p: p.window_start_unix_s):
        if p.seed == _SEED and (p.input_len, p.output_len) == _WORKLOAD and p.word_prompts:
            first.setdefault(p.max_num_seqs, p)
    return [first[n].name for n in sorted(first)]


def main(argv: list[str] | None = None) -> int:
    """Print one line per factor; 2 if a named point is not among the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.1, 1.2, 1.3, 1.5])
    parser.add_argument("--scale", choices=sorted(_SCALED), default="api")
    parser.add_argument("--points", nargs="+", help="runs to replay (default: see above)")
    parser.add_argument("--results", type=Path, default=fidelity._RESULTS)
    args = parser.parse_args(argv)
    points = fidelity.load_points(args.results) + fidelity.load_points(fidelity._TOKENIZER_RESULTS)
    names = args.points or _default_points(points)
    by_name = {p.name: p for p in points}
    if not names or any(n not in by_name for n in names):
        missing = [n for n in names if n not in by_name] or ["seed-41 1024/128"]
        print(f"sim_host_speed: error: no point {', '.join(missing)} in the results")
        return 2
    for name in names:
        p = by_name[name]
        f = p.figures
        print(f"{name}: real TTFT p50 {f.ttft_ms_p50:.0f} ms, ITL p50 {f.itl_ms_p50:.2f} ms, "
              f"{f.output_tok_s:.0f} tok/s")  # fmt: skip
    for factor in args.factors:
        perf = scaled(args.scale, factor)
        cells = []
        for name in names:
            run = fidelity.replay_point(points, name, perf=perf)
            assert run is not None, "every name was checked above"
            point, replay, traced = run
            sim = fidelity._measure(replay, traced, point.concurrency)
            cells.append(
                f"{name} {sim.ttft_ms_p50:.0f} ms (ITL {sim.itl_ms_p50:.2f}, "
                f"{sim.output_tok_s:.0f} tok/s)"
            )
        print(f"{args.scale} costs x{factor:g}: " + "; ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
