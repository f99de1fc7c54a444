"""How much prefill work a bench window held per output token, from vLLM's own step log.

    python benchmarks/h100_vllm/window_balance.py

A closed loop of N streams with one fixed prompt and output length moves in waves: a wave's
prompts are prefilled together, then its tokens decode together. Over whole waves a request's
prompt tokens and its output tokens come in the workload's ratio (1024/128 = 8); a window of
one or two request lifetimes holds whatever part of the wave cycle it fell on, and its energy
per output token follows the prefill work it held. This prints, for every committed run of
1024/128 at 256 streams whose server logged its steps, the prompt tokens vLLM prefilled and
the tokens it decoded inside the bench's steady-state window, their ratio, and the run's
J/output-token.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iteration_log import iterations  # this script's folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from result_files import read_json

_RESULTS = Path(__file__).resolve().parents[1] / "results" / "h100-vllm"
# (result, its server's step log): the 1024/128 runs at 256 streams whose logs carry unix stamps.
RUNS = (
    ("repeat/n256_w1024-128.json.gz", "repeat/vllm_n256.log.gz"),
    ("intake-a/n256_w1024-128.json", "intake-a/vllm_n256.log.gz"),
    ("intake-b/n256_w1024-128.json", "intake-b/vllm_n256.log.gz"),
)


def main() -> int:
    """Print one line per run."""
    print("run | window s | prefilled prompt tokens | decoded tokens | ratio | J/output-token")
    for result, log in RUNS:
        d = read_json(_RESULTS / result)
        window = d["window"]
        steps = iterations(_RESULTS / log, window["start_unix_s"], window["end_unix_s"])
        prompt = sum(s.prompt_tokens for s in steps)
        decoded = sum(s.decodes for s in steps)
        span = window["end_unix_s"] - window["start_unix_s"]
        print(
            f"{result} | {span:.1f} | {prompt} | {decoded} | {prompt / decoded:.2f} | "
            f"{d['energy_per_output_token_j']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
