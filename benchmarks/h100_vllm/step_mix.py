"""Which engine steps carry prefill work, real vLLM vs its simulator replay.

    python benchmarks/h100_vllm/step_mix.py POINT LOG [--results DIR]

POINT is a name as `benchmarks/sim_fidelity.py` prints it (`intake-b/n128_w1024-128`), LOG
the server's log with vLLM's iteration details (`--enable-logging-iteration-details`), stamped
in unix time (`vllm_logging_ms.json`). Over the result's steady-state window this counts the
engine steps, the share that prefilled anything and how many prompts those prefilled, on
both sides, and how long a decode-only step takes, beside the client's ITL p50: an ITL p50
is a decode-only step when most steps carry no prefill, and a mixed step when most do. The
real steps are vLLM's own log lines; the replay's are `jouletune.sim.ClosedLoopReplay`'s
steps over the replay's own window.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sim_fidelity as fidelity
from iteration_log import iterations  # this script's folder
from result_files import read_json

from jouletune.loadgen import compute_metrics, steady_state_window


@dataclass(frozen=True)
class StepMix:
    """The steps of one window."""

    steps: int
    window_s: float
    prefill_steps: int
    prompts_per_prefill_step: float
    decode_step_ms: float
    runs: tuple[int, int, int]  # runs of consecutive prefilling steps: 1, 2, 3 or more long

    def line(self, name: str) -> str:
        """One printed line."""
        one, two, more = (n / max(sum(self.runs), 1) for n in self.runs)
        return (
            f"{name}: {self.steps} steps in {self.window_s:.1f} s "
            f"({1e3 * self.window_s / self.steps:.2f} ms each), "
            f"{self.prefill_steps / self.steps:.0%} with prefill, "
            f"{self.prompts_per_prefill_step:.2f} prompts per such step, "
            f"a decode-only step after another {self.decode_step_ms:.2f} ms (median); "
            f"runs of prefilling steps {one:.0%} one step long, {two:.0%} two, {more:.0%} more"
        )


def mix(steps: list[tuple[float, int]], start_s: float, end_s: float) -> StepMix:
    """`steps`: (time, prompts prefilled) per step, in order; those in [start_s, end_s]. A
    decode-only step's time is the gap between its stamp and the one before, counted where
    that one prefilled nothing either (after a prefill step the gap holds part of it)."""
    inside = [(t, n) for t, n in steps if start_s <= t <= end_s]
    with_prefill = [n for _, n in inside if n]
    decode_gaps = [b[0] - a[0] for a, b in itertools.pairwise(inside) if a[1] == 0 and b[1] == 0]
    lengths = [
        len(list(run)) for prefills, run in itertools.groupby(n > 0 for _, n in inside) if prefills
    ]
    return StepMix(
        steps=len(inside),
        window_s=end_s - start_s,
        prefill_steps=len(with_prefill),
        prompts_per_prefill_step=statistics.mean(with_prefill) if with_prefill else 0.0,
        decode_step_ms=1e3 * statistics.median(decode_gaps) if decode_gaps else math.nan,
        runs=(lengths.count(1), lengths.count(2), sum(1 for n in lengths if n > 2)),
    )


def replay_mix(run: fidelity.ReplayedRun) -> tuple[StepMix, float]:
    """The replay's steps over its own window, and its ITL p50 (ms)."""
    point, replay, traced = run
    records = fidelity.client_records(traced)
    window = steady_state_window(records, max_concurrency=point.concurrency, closed_loop=True)
    steps = [
        (s.end_s, sum(1 for req, n in s.scheduled if n > 1 or req.output_tokens == 0))
        for s in replay.steps
    ]
    itl = compute_metrics(records, window).itl_ms.p50
    assert itl is not None, "a window without tokens"
    return mix(steps, window.start_s, window.end_s), itl


def main(argv: list[str] | None = None) -> int:
    """Print the two sides; 2 on a missing point or a log without iteration lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("point")
    parser.add_argument("log", type=Path)
    parser.add_argument("--results", type=Path, default=fidelity._RESULTS)
    args = parser.parse_args(argv)
    run = fidelity.replay_point(fidelity.load_points(args.results), args.point)
    steps = [(it.unix_s, it.prompts) for it in iterations(args.log)]
    if run is None or not steps:
        print(f"step_mix: error: no point {args.point} in {args.results}, or no iteration lines")
        return 2
    point = run[0]
    window = read_json(point.path)["window"]
    real = mix(steps, window["start_unix_s"], window["end_unix_s"])
    print(real.line(f"real  (ITL p50 {point.figures.itl_ms_p50:.2f} ms)"))
    sim, itl = replay_mix(run)
    print(sim.line(f"sim   (ITL p50 {itl:.2f} ms)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
