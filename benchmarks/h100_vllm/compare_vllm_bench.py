"""`jouletune bench` against `vllm bench serve`, and prompt lengths as vLLM counted them, from
a tokenizer_session.sh run (default: benchmarks/results/h100-tokenizer).

    python benchmarks/h100_vllm/compare_vllm_bench.py [DIR]

Checks issue #12's bounds: TTFT p50, TPOT p50 and output tokens/s within 3% of vLLM's own
client on the same server and workload; prompt tokens counted by vLLM within 1% of those
requested at 128, 512 and 1536. Every figure is compared over the whole run (ramp-up and
drain included, as vLLM measures it: the result's `run` section); results written before the
`run` section had latencies compare jouletune's steady-state cohort instead, and say so.
Exit 1 when a bound is missed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parents[1] / "results" / "h100-tokenizer"
LATENCY_BOUND = 0.03
LENGTH_BOUND = 0.01


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _pairs(out: Path, c: int) -> list[tuple[str, float, float]]:
    jt, vl = _load(out / f"jouletune_c{c}.json"), _load(out / f"vllm_c{c}.json")
    run = jt["run"]
    scope = "run" if run.get("ttft_ms") else "cohort"
    latency = run if scope == "run" else jt
    return [
        (f"TTFT p50 ms ({scope})", float(latency["ttft_ms"]["p50"]), float(vl["median_ttft_ms"])),
        (f"TPOT p50 ms ({scope})", float(latency["tpot_ms"]["p50"]), float(vl["median_tpot_ms"])),
        (
            "output tok/s",
            float(jt["run"]["output_token_throughput"]),
            float(vl["output_throughput"]),
        ),
    ]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    ok = True
    print("prompt tokens: requested -> counted by vLLM (usage.prompt_tokens)")
    for length in (128, 512, 1536):
        w = _load(out / f"len{length}.json")["workload"]
        dev = float(w["prompt_tokens_deviation"])
        ok &= abs(dev) <= LENGTH_BOUND
        asked, counted = w["mean_requested_prompt_tokens"], w["mean_prompt_tokens"]
        print(f"  {length:5d}: {asked:.1f} -> {counted:.1f} ({dev:+.2%}, {w['tokenizer']})")
    for c in (16, 128):
        print(f"concurrency {c}: jouletune bench vs vllm bench serve")
        for name, mine, theirs in _pairs(out, c):
            diff = mine / theirs - 1
            ok &= abs(diff) <= LATENCY_BOUND
            print(f"  {name:22} {mine:10.2f} {theirs:10.2f}  {diff:+.2%}")
    print("all within bounds" if ok else "OUTSIDE a bound")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
