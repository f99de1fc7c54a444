"""Where a real vLLM request's time to first token goes, request by request.

    python benchmarks/h100_vllm/intake_timeline.py RESULT.json VLLM_LOG[.gz] [--bins-ms 100]

RESULT.json is a `jouletune bench --save-detailed` result; VLLM_LOG is the log of the server it
ran against, started with `--enable-log-requests --enable-logging-iteration-details` and
`VLLM_LOGGING_CONFIG_PATH=benchmarks/h100_vllm/vllm_logging_ms.json` (every line stamped with
unix time to the microsecond, the clock the bench's `send_unix_s` uses on the same machine).
Each request's id (the `id` of its response) names it in vLLM's log, so its TTFT splits into

* render: client send -> "Received request" (HTTP, validation, tokenization: API server);
* handoff: "Received request" -> "Added request" (output processor and ZMQ send to the core);
* engine: "Added request" -> first token at the client (waiting for a step, the prefill, the
  step's output back through the API server to the client).

Prints percentiles of each part over the window's cohort, then a timeline in bins: requests
sent, rendered, added, prefill tokens the engine ran, and streams decoding, so a wave of
returning requests can be followed through the server.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import itertools
import re
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from result_files import read_json

_LINE = re.compile(r"^(?:\(\w+ pid=\d+\) )?(\d+\.\d+) \w+ \[[^\]]*\] (.*)$")
_RECEIVED = re.compile(r"^Received request (cmpl-[0-9a-f]+)-0:")
_ADDED = re.compile(r"^Added request (cmpl-[0-9a-f]+)-0(?:-[0-9a-f]+)?\.")
_STEP = re.compile(
    r"^Iteration\(\d+\): (\d+) context requests, (\d+) context tokens, (\d+) generation requests"
)


@dataclass(frozen=True)
class Step:
    """One engine step as the iteration log shows it (logged when the step's output is ready)."""

    unix_s: float
    context_tokens: int
    decoding: int


@dataclass(frozen=True)
class Intake:
    """One request's path into the engine; unix seconds."""

    sent: float
    received: float
    added: float
    first_token: float
    in_window: bool


def read_log(path: Path) -> tuple[dict[str, float], dict[str, float], list[Step]]:
    """Received and Added times per request id, and the engine's steps, from a vLLM log."""
    received: dict[str, float] = {}
    added: dict[str, float] = {}
    steps: list[Step] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", errors="replace") as lines:
        for line in lines:
            if not (m := _LINE.match(line.rstrip("\n"))):
                continue
            unix_s, message = float(m.group(1)), m.group(2)
            if r := _RECEIVED.match(message):
                received[r.group(1)] = unix_s
            elif a := _ADDED.match(message):
                added[a.group(1)] = unix_s
            elif s := _STEP.match(message):
                steps.append(Step(unix_s, int(s.group(2)), int(s.group(3))))
    return received, added, steps


def intakes(
    result: dict[str, Any], received: dict[str, float], added: dict[str, float]
) -> list[Intake]:
    """The requests of the result that the log shows both stages of."""
    out = []
    for r in result["requests"]:
        rid = r["request_id"]
        if r["success"] and rid in received and rid in added and r["first_token_unix_s"]:
            out.append(
                Intake(
                    r["send_unix_s"],
                    received[rid],
                    added[rid],
                    r["first_token_unix_s"],
                    r["in_window"] and r["cohort"],
                )
            )
    return out


def _pcts(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"{q[0] * 1e3:8.1f} {statistics.median(values) * 1e3:8.1f} {q[8] * 1e3:8.1f}"


def print_parts(rows: list[Intake]) -> None:
    """Percentiles (p10, p50, p90, ms) of each part of the TTFT over the window's cohort."""
    cohort = [r for r in rows if r.in_window] or rows
    print(f"{len(cohort)} requests (window cohort); ms:      p10      p50      p90")
    parts = {
        "render (send -> Received)": [r.received - r.sent for r in cohort],
        "handoff (Received -> Added)": [r.added - r.received for r in cohort],
        "engine (Added -> first token)": [r.first_token - r.added for r in cohort],
        "TTFT": [r.first_token - r.sent for r in cohort],
    }
    for name, values in parts.items():
        print(f"  {name:<32}{_pcts(values)}")


def print_pace(rows: list[Intake], steps: list[Step]) -> None:
    """How fast the API server renders a burst, and how late a step's tokens reach clients.

    Consecutive "Received" stamps under 3 ms apart belong to one burst of arrivals: their
    spacing is the rendering cost of one prompt when rendering is the bottleneck. A first
    token's delay is from the log line of the last prefill step before it (the engine core
    logs a step as its output is processed) to the client having the token.
    """
    received = sorted(r.received for r in rows)
    spacing = [(b - a) for a, b in itertools.pairwise(received) if b - a < 3e-3]
    prefills = [s.unix_s for s in steps if s.context_tokens > 0]
    delays = []
    for r in rows:
        if r.in_window and (i := bisect.bisect_right(prefills, r.first_token) - 1) >= 0:
            delays.append(r.first_token - prefills[i])
    if len(spacing) > 1:
        print(f"  {'Received spacing within bursts':<32}{_pcts(spacing)}   ({len(spacing)} gaps)")
    if len(delays) > 1:
        print(f"  {'prefill step logged -> client':<32}{_pcts(delays)}")


def print_timeline(rows: list[Intake], steps: list[Step], bin_s: float) -> None:
    """Counts per bin over the window: sent, rendered, added, prefill tokens, decoding streams."""
    window = [r for r in rows if r.in_window] or rows
    t0 = min(r.sent for r in window)
    t1 = max(r.first_token for r in window)
    sent: Counter[int] = Counter()
    rendered: Counter[int] = Counter()
    added: Counter[int] = Counter()
    for r in rows:
        sent[int((r.sent - t0) // bin_s)] += 1
        rendered[int((r.received - t0) // bin_s)] += 1
        added[int((r.added - t0) // bin_s)] += 1
    prefill: Counter[int] = Counter()
    decoding: Counter[int] = Counter()
    count: Counter[int] = Counter()
    for s in steps:
        b = int((s.unix_s - t0) // bin_s)
        prefill[b] += s.context_tokens
        decoding[b] += s.decoding
        count[b] += 1
    print(f"\ntimeline from the cohort's first send, {bin_s * 1e3:.0f} ms bins")
    print("    t_s  sent  rendered  added  prefill_tok  steps  decoding_mean")
    for b in range(int((t1 - t0) // bin_s) + 1):
        mean = decoding[b] / count[b] if count[b] else 0.0
        print(
            f"{b * bin_s:7.2f} {sent[b]:5d} {rendered[b]:9d} {added[b]:6d} {prefill[b]:12d} "
            f"{count[b]:6d} {mean:14.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Print the parts and the timeline; 2 if the log names none of the result's requests."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("--bins-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    result = read_json(args.result)
    received, added, steps = read_log(args.log)
    rows = intakes(result, received, added)
    if not rows:
        print(f"intake_timeline: error: {args.log} names none of {args.result}'s requests")
        return 2
    print_parts(rows)
    print_pace(rows, steps)
    print_timeline(rows, steps, args.bins_ms / 1e3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
