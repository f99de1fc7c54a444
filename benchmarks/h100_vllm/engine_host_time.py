"""How long vLLM's engine core spends on the host between two steps, from its own log.

    python benchmarks/h100_vllm/engine_host_time.py

vLLM 0.24 schedules asynchronously (`EngineCore.step_with_batch_queue`): after it hands out
step k-1's tokens it schedules step k+1, launches it, and only then waits for step k. Its
iteration log (`--enable-logging-iteration-details`) stamps every step when that wait ends
and says how long the wait took ("iteration elapsed time"). So between two stamps, the gap
minus the wait is the host's own time: handing out the previous tokens, taking new requests
in, scheduling and launching the next step. When that exceeds the GPU's step, the wait is
~0 and the host sets the pace.

A step runs from a captured CUDA graph only up to `min(2 * max_num_seqs, 512)` tokens
(vLLM's `max_cudagraph_capture_size`): every step that prefills a prompt next to the running
decodes is larger and is launched kernel by kernel. For each committed point whose log
carries unix stamps this prints the median host time of an interval whose next step is
decode-only and of one whose next step prefills; then it fits the latter, interval by
interval, to a + b · (the next step's prefill tokens) + c · (its decoding sequences), by
least absolute deviations (a few intervals run 3-5 times longer: the host is shared). The
fit is the simulator's `eager_launch_s`, `eager_launch_per_token_s` and
`eager_launch_per_seq_s` (`jouletune.sim.DEFAULT_PERF`).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from iteration_log import iterations  # this script's folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from result_files import read_json

_RESULTS = Path(__file__).resolve().parents[1] / "results"
# (result file, its server's log): every committed point whose log carries unix stamps.
POINTS = (
    ("h100-vllm/intake-a/n8_w1024-128.json", "h100-vllm/intake-a/vllm_n8.log.gz"),
    ("h100-vllm/intake-b/n128_w1024-128.json", "h100-vllm/intake-b/vllm_n128.log.gz"),
    ("h100-vllm/intake-a/n192_w1024-128.json", "h100-vllm/intake-a/vllm_n192.log.gz"),
    ("h100-vllm/intake-a/n256_w1024-128.json", "h100-vllm/intake-a/vllm_n256.log.gz"),
    ("h100-vllm/intake-b/n256_w1024-128.json", "h100-vllm/intake-b/vllm_n256.log.gz"),
    ("h100-vllm/varied-a/n128_w512-256.json.gz", "h100-vllm/varied-a/vllm_n128.log.gz"),
    ("h100-vllm/varied-a/n128_w1024-128.json.gz", "h100-vllm/varied-a/vllm_n128.log.gz"),
    ("h100-vllm/varied-a/n256_w512-256.json.gz", "h100-vllm/varied-a/vllm_n256.log.gz"),
    ("h100-vllm/varied-a/n256_w1024-128.json.gz", "h100-vllm/varied-a/vllm_n256.log.gz"),
    ("h100-vllm/varied-b/n128_w512-256.json.gz", "h100-vllm/varied-b/vllm_n128.log.gz"),
    ("h100-vllm/varied-b/n128_w1024-128.json.gz", "h100-vllm/varied-b/vllm_n128.log.gz"),
    ("h100-vllm/varied-b/n256_w512-256.json.gz", "h100-vllm/varied-b/vllm_n256.log.gz"),
    ("h100-vllm/varied-b/n256_w1024-128.json.gz", "h100-vllm/varied-b/vllm_n256.log.gz"),
    (
        "h100-tokenizer/fixed-client/jouletune_c128_rr0.5_s41.json.gz",
        "h100-tokenizer/fixed-client/vllm_n128.log.gz",
    ),
    (
        "h100-tokenizer/fixed-client/jouletune_c128_rr0.5_s45.json.gz",
        "h100-tokenizer/fixed-client/vllm_n128.log.gz",
    ),
    ("h100-tokenizer/iter/jouletune_c129_rr0.json.gz", "h100-tokenizer/iter/vllm_c129_rr0.log.gz"),
    ("h100-vllm/varied-c/log/n128_w512-256.json.gz", "h100-vllm/varied-c/log/vllm_n128.log.gz"),
    (
        "h100-tokenizer/fixed-client-b/jouletune_c128_rr0.5_s41.json.gz",
        "h100-tokenizer/fixed-client-b/vllm_n128.log.gz",
    ),
)


@dataclass(frozen=True)
class Interval:
    """The host's time between two stamps whose second step decodes only, and the step the
    host launched meanwhile: its prefill tokens and its decoding sequences."""

    host_ms: float
    next_prefill_tokens: int
    next_decodes: int


def intervals(result: Path, log: Path) -> list[Interval]:
    """Every such interval inside the result's steady-state window."""
    window = read_json(result)["window"]
    steps = iterations(log, window["start_unix_s"], window["end_unix_s"])
    return [
        Interval(1e3 * (b.unix_s - a.unix_s) - b.wait_ms, c.prompt_tokens, c.decodes)
        for a, b, c in zip(steps, steps[1:], steps[2:], strict=False)
        if b.prompt_tokens == 0
    ]


def fit_lad(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least absolute deviations of y on x (with an intercept), by reweighted least squares."""
    a = np.column_stack([np.ones(len(y)), x])
    weights = np.ones(len(y))
    for _ in range(100):
        coef = np.linalg.lstsq(a * weights[:, None], y * weights, rcond=None)[0]
        weights = 1.0 / np.sqrt(np.maximum(np.abs(y - a @ coef), 0.5))
    return coef


def main() -> int:
    """Print the table and the fit."""
    before_prefill: list[Interval] = []
    print("point | host ms before a decode-only step (n) | before a prefilling step (n)")
    for result, log in POINTS:
        found = intervals(_RESULTS / result, _RESULTS / log)
        split = [
            [i.host_ms for i in found if (i.next_prefill_tokens > 0) is prefills]
            for prefills in (False, True)
        ]
        print(
            f"{result} | {statistics.median(split[0]):.2f} ({len(split[0])}) | "
            f"{statistics.median(split[1]):.2f} ({len(split[1])})"
        )
        before_prefill += [i for i in found if i.next_prefill_tokens > 0]
    x = np.array([(i.next_prefill_tokens, i.next_decodes) for i in before_prefill], float)
    y = np.array([i.host_ms for i in before_prefill])
    a, per_token, per_seq = fit_lad(x, y)
    residual = float(np.median(np.abs(y - (a + x @ [per_token, per_seq]))))
    print(
        f"host time before a prefilling step ({len(y)} intervals) ~ {a:.2f} ms"
        f" + {1e3 * per_token:.2f} µs × prefill tokens + {1e3 * per_seq:.1f} µs × decodes"
        f" (median |residual| {residual:.2f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
