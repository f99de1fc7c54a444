"""How long vLLM takes from taking in a lone request to the end of its prefill, one stream.

    python benchmarks/h100_vllm/lone_prefill.py

On a `--max-num-seqs 1` server vLLM captures CUDA graphs for steps of 1 and 2 tokens only,
so every prefill is launched kernel by kernel, from an idle engine. For each committed
one-stream server whose log carries unix stamps and the request log, this prints, by the
prompt tokens a step prefilled, the median time from vLLM's "Added request" line to that
step's stamp (the end of the engine core's wait for it), with its 10th and 90th percentiles.
The GPU's own prefill takes ~7 ms for 512 tokens and ~24 ms for 1,024 (the simulator's
H100); the rest is the host launching the step (docs/validation.md, "An idle engine launches
a step too large for a CUDA graph").
"""

from __future__ import annotations

import gzip
import re
import statistics
import sys
from bisect import bisect_right
from pathlib import Path

from iteration_log import iterations  # this script's folder

_RESULTS = Path(__file__).resolve().parents[1] / "results" / "h100-vllm"
LOGS = ("repeat/vllm_n1.log.gz", "n1-launch/vllm_n1.log.gz")
_ADDED = re.compile(r"\) ([0-9]{10}\.[0-9]+) .*Added request")


def added_to_stamp_ms(log: Path) -> dict[int, list[float]]:
    """Milliseconds from each request's "Added" line to its prefilling step's stamp, by the
    step's prompt tokens (one stream: the first prefilling step after an "Added" is its own)."""
    prefills = [s for s in iterations(log) if s.prompt_tokens > 0]
    stamps = [s.unix_s for s in prefills]
    with gzip.open(log, "rt") as f:
        added = [float(m[1]) for line in f if (m := _ADDED.search(line))]
    by_tokens: dict[int, list[float]] = {}
    for added_s in added:
        k = bisect_right(stamps, added_s)
        if k < len(prefills):
            by_tokens.setdefault(prefills[k].prompt_tokens, []).append(1e3 * (stamps[k] - added_s))
    return by_tokens


def main() -> int:
    """Print one line per log and prompt length."""
    print("log | prompt tokens | prefills | ms from Added to the step's stamp: p10 / median / p90")
    for log in LOGS:
        for tokens, ms in sorted(added_to_stamp_ms(_RESULTS / log).items()):
            q = statistics.quantiles(ms, n=10) if len(ms) > 1 else [ms[0]] * 9
            median = statistics.median(ms)
            print(f"{log} | {tokens} | {len(ms)} | {q[0]:.1f} / {median:.1f} / {q[8]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
