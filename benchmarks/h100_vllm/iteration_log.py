"""vLLM's per-step log (`--enable-logging-iteration-details`), stamped in unix time.

The server must run with `VLLM_LOGGING_CONFIG_PATH=benchmarks/h100_vllm/vllm_logging_ms.json`,
which stamps every line with unix time to the microsecond (the clock of a bench result's
`window`). A step's line is written when the engine core's wait for the step ends, and says
how long that wait took ("iteration elapsed time").
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

_ITERATION = re.compile(
    r"([0-9]{10}\.[0-9]+) .*Iteration\(\d+\): (\d+) context requests, (\d+) context tokens, "
    r"(\d+) generation requests, \d+ generation tokens, iteration elapsed time: ([0-9.]+) ms"
)


@dataclass(frozen=True)
class Iteration:
    """One engine step as vLLM logged it."""

    unix_s: float
    prompts: int  # requests the step prefilled (vLLM's "context requests")
    prompt_tokens: int  # tokens it prefilled
    decodes: int  # requests it decoded
    wait_ms: float  # how long the engine core waited for it


def iterations(log: Path, start_s: float = 0.0, end_s: float = float("inf")) -> list[Iteration]:
    """The steps of `log` (plain or gzip'd) stamped in [start_s, end_s], in order."""
    opener = gzip.open if log.suffix == ".gz" else open
    with opener(log, "rt") as f:
        found = (
            Iteration(float(m[1]), int(m[2]), int(m[3]), int(m[4]), float(m[5]))
            for m in map(_ITERATION.search, f)
            if m
        )
        return [it for it in found if start_s <= it.unix_s <= end_s]
