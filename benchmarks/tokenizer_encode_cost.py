"""What a prompt costs vLLM's renderer: tokenizer encode time per token, word vocabulary vs BPE.

    python benchmarks/tokenizer_encode_cost.py [--prompts 50] [--lengths 512 1024]

vLLM 0.24 renders (tokenizes) each prompt in one renderer thread, one prompt at a time; on the
H100 host a burst of 1024-token prompts of the dummy model's word vocabulary left it 1.1 ms
apart (`PerfConstants.render_s_per_token`, measured from vLLM's request log). Most of that is
the encode itself: this times HF `tokenizers` encoding the prompts `jouletune bench` sends, with
the dummy model's word-level vocabulary (shared/vllm-h100/mk_model.py: `WordLevel`, split on
whitespace) and with a real BPE vocabulary (DeepSeek-V3's, 129,280 entries,
scripts/install-tools.sh puts it in .tools/), and prints each per token and their ratio. The
ratio, not the absolute figure, carries to another host: the simulator's renderer cost for a
BPE tokenizer's run is the measured word figure times it (benchmarks/sim_fidelity.py).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import tokenizers
from dummy_tokenizer import word_level  # this script's folder
from tokenizers import Tokenizer

from jouletune.loadgen import load_requests
from jouletune.tokenizer import PromptTokenizer, WordTokenizer, load_tokenizer

_BPE_DIR = Path(__file__).resolve().parents[1] / ".tools" / "tokenizers" / "deepseek-v3"
_REPEATS = 5


def encode_us_per_token(tok: Tokenizer, prompts: list[str]) -> float:
    """Median over repeats of the mean encode time per token, microseconds."""
    tokens = sum(len(tok.encode(p).ids) for p in prompts)  # also warms the tokenizer up
    runs = []
    for _ in range(_REPEATS):
        start = time.perf_counter()
        for p in prompts:
            tok.encode(p)
        runs.append((time.perf_counter() - start) / tokens * 1e6)
    return statistics.median(runs)


def prompts(tokenizer: PromptTokenizer, n: int, length: int) -> list[str]:
    """`n` of the bench's random prompts of `length` tokens."""
    reqs = load_requests(
        dataset="random",
        num_prompts=n,
        seed=1,
        random_input_len=length,
        random_output_len=8,
        tokenizer=tokenizer,
    )
    return [r.prompt for r in reqs]


def main(argv: list[str] | None = None) -> int:
    """Print one line per prompt length; 2 if the BPE tokenizer is not installed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    args = parser.parse_args(argv)
    if not (_BPE_DIR / "tokenizer.json").is_file():
        print(f"tokenizer_encode_cost: error: {_BPE_DIR} missing: run scripts/install-tools.sh")
        return 2
    bpe_prompts = load_tokenizer(str(_BPE_DIR))
    word, bpe = word_level(), Tokenizer.from_file(str(_BPE_DIR / "tokenizer.json"))
    print(
        f"# tokenizers {tokenizers.__version__}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}; {args.prompts} prompts per length"
    )
    for length in args.lengths:
        w = encode_us_per_token(word, prompts(WordTokenizer(), args.prompts, length))
        b = encode_us_per_token(bpe, prompts(bpe_prompts, args.prompts, length))
        print(f"{length} tokens: word {w:.2f} us/token, BPE {b:.2f} us/token, ratio {b / w:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
