"""How a closed loop's second wave enters the server, real H100 vs its simulator replay.

    python benchmarks/sim_wave_returns.py [POINT ...] [--results DIR] [--bin-s 0.5]

All N clients of a `jouletune bench` closed loop send at once, so requests travel in waves:
the first wave is prefilled at the GPU's prefill rate, decodes, and returns (each client
sending its next request) at the pace it was prefilled. How long the first returners take
to reach the scheduler sets how many requests queue for prefill behind them, and that queue
stays through the following waves: it is the TTFT of the rest of the run. For each point
(a name as sim_fidelity.py prints it; default: the 1024/128 runs with per-request detail)
this prints, real and simulated, requests sent and first tokens per bin, how many requests
the second wave sent in its first second, and the TTFT of its first twelve in sending order.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import sim_fidelity as fidelity
from result_files import read_json

_DEFAULT = [
    "iter-c/n8_w1024-128",
    "iter-a/n96_w1024-128",
    "iter-b/n96_w1024-128",
    "iter-a/n128_w1024-128",
    "iter-c/n192_w1024-128",
    "iter-a/n256_w1024-128",
    "iter-b/n256_w1024-128",
]
_BINS = 44
_FIRST = 12


def per_bin(times_s: list[float], t0_s: float, bin_s: float) -> list[int]:
    """How many of `times_s` fall in each bin after `t0_s`."""
    counts = Counter(int((t - t0_s) // bin_s) for t in times_s)
    return [counts[b] for b in range(_BINS)]


def second_wave_ttft_ms(pairs: list[tuple[float, float]]) -> list[int]:
    """TTFT (ms) of the first requests sent after the opening burst, in sending order."""
    pairs = sorted(pairs)
    later = [(s, f) for s, f in pairs if s > pairs[0][0] + 1.0]
    return [round((f - s) * 1e3) for s, f in later[:_FIRST]]


def second_wave_burst(pairs: list[tuple[float, float]]) -> int:
    """Requests sent in the first second of the second wave: the queue it starts with."""
    sends = sorted(s for s, _ in pairs)
    start = next(s for s in sends if s > sends[0] + 1.0)
    return sum(start <= s < start + 1.0 for s in sends)


def show(name: str, pairs: list[tuple[float, float]], bin_s: float) -> None:
    """Print one side's sends and first tokens per bin and how its second wave started."""
    t0 = min(s for s, _ in pairs)
    print(f"  {name} sent per bin        {per_bin([s for s, _ in pairs], t0, bin_s)}")
    print(f"  {name} first tokens per bin {per_bin([f for _, f in pairs], t0, bin_s)}")
    print(
        f"  {name} second wave: {second_wave_burst(pairs)} sent in its first second; "
        f"first TTFTs ms {second_wave_ttft_ms(pairs)}"
    )


def main(argv: list[str] | None = None) -> int:
    """Print each point; 2 if a named point is not among the results or lacks detail."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("points", nargs="*", default=_DEFAULT)
    parser.add_argument("--results", type=Path, default=fidelity._RESULTS)
    parser.add_argument("--bin-s", type=float, default=0.5)
    args = parser.parse_args(argv)
    points = fidelity.load_points(args.results)
    for name in args.points:
        run = fidelity.replay_point(points, name)
        detail = read_json(run[0].path).get("requests") if run else None
        if run is None or not detail:
            print(f"sim_wave_returns: error: no point {name} with per-request detail")
            return 2
        real = [(r["send_unix_s"], r["first_token_unix_s"]) for r in detail if r["success"]]
        _, _, traced = run
        print(f"{name} ({args.bin_s:g} s bins from the first send)")
        show("real", real, args.bin_s)
        show("sim ", [(t.send_s, t.token_times_s[0]) for t in traced], args.bin_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
