"""Tokens per streamed chunk in every committed real run that kept per-request detail.

    python benchmarks/tokens_per_chunk.py [FOLDER ...]     (default: benchmarks/results)

The bench's `tokens_per_chunk` (output tokens / chunks with choices of the successful requests
whose last chunk arrived in the steady-state window) for results written before the bench
recorded it, rebuilt from their per-request detail (`--save-detailed`: each request's output
tokens and the gaps before its later chunks). Above 1.1 the bench warns that ITL spans several
tokens (docs/measurement.md, "Tokens per chunk"). One line per run, lowest first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from result_files import find_results, read_json  # this script's folder

_RESULTS = Path(__file__).resolve().parent / "results"


def tokens_per_chunk(result: dict[str, Any]) -> float | None:
    """The run's tokens per chunk over its window's requests (None: no detail or window)."""
    window, details = result.get("window"), result.get("requests") or []
    if window is None or not all("itl_ms" in r for r in details):
        return None
    start, end = window["start_unix_s"], window["end_unix_s"]
    ended = [r for r in details if r["success"] and start < r["end_unix_s"] <= end]
    chunks = sum(len(r["itl_ms"]) + 1 for r in ended)
    # The bench counts the chunks where the server sent no usage.
    tokens = sum(r["output_tokens"] or len(r["itl_ms"]) + 1 for r in ended)
    return tokens / chunks if chunks else None


def main(argv: list[str]) -> int:
    """Print each run's tokens per chunk, its streams and GPU; 2 when no run has detail."""
    rows = []
    for folder in [Path(a) for a in argv] or [_RESULTS]:
        for path in find_results(folder, "**/*"):
            result = read_json(path)
            ratio = tokens_per_chunk(result) if isinstance(result, dict) else None
            if ratio is not None:
                gpus = ", ".join(result["environment"]["gpu_models"])
                rows.append((ratio, path, result["config"]["max_concurrency"], gpus))
    if not rows:
        print("tokens_per_chunk: error: no result with per-request detail", file=sys.stderr)
        return 2
    for ratio, path, streams, gpus in sorted(rows):
        print(f"{ratio:.3f}  {streams:>4} streams  {gpus}  {path}")
    print(f"{len(rows)} runs: {min(rows)[0]:.3f}-{max(rows)[0]:.3f} tokens per chunk")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
