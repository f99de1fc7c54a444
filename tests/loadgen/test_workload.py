"""Datasets, arrival times and the config model."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from jouletune.loadgen import BenchConfig, DatasetError, SampleRequest, load_requests
from jouletune.loadgen._arrivals import arrival_offsets_s
from jouletune.tokenizer import WordTokenizer
from tests.tokenizers import DEEPSEEK_DIR, deepseek

WORDS = WordTokenizer()


def test_random_prompts_are_exactly_n_synthetic_tokens_and_seeded() -> None:
    reqs = load_requests(
        tokenizer=WORDS,
        dataset="random",
        num_prompts=5,
        seed=7,
        random_input_len=300,
        random_output_len=20,
    )
    assert len(reqs) == 5
    for r in reqs:
        words = r.prompt.split(" ")
        assert len(words) == r.prompt_len == 300 and r.output_len == 20
        ids = [int(w.removeprefix("t")) for w in words]
        assert all(w.startswith("t") for w in words) and min(ids) >= 3 and max(ids) <= 128255
    again = load_requests(
        tokenizer=WORDS,
        dataset="random",
        num_prompts=5,
        seed=7,
        random_input_len=300,
        random_output_len=20,
    )
    other = load_requests(
        tokenizer=WORDS,
        dataset="random",
        num_prompts=5,
        seed=8,
        random_input_len=300,
        random_output_len=20,
    )
    assert list(reqs) == list(again) and list(reqs) != list(other)


def test_word_prompts_read_out_of_order_match_a_full_build() -> None:
    # The fidelity benchmark rebuilds a 100,000-prompt workload's first few prompts only, and
    # the bench's prefetch thread builds ahead of the streams: the prompts must not depend
    # on which were read first.
    def workload() -> Sequence[SampleRequest]:
        return load_requests(
            tokenizer=WORDS,
            dataset="random",
            num_prompts=100_000,
            seed=3,
            random_input_len=64,
            random_output_len=8,
            random_range_ratio=0.5,
        )

    lazy = workload()
    tail, head = lazy[40], lazy[:3]
    full = workload()
    built = [full[i] for i in range(41)]
    assert tail == built[40] and list(head) == built[:3]
    # The committed H100 runs' stream: every length drawn first, then each prompt's words.
    rng = np.random.default_rng(3)
    in_lens = rng.integers(32, 97, size=100_000)
    rng.integers(4, 13, size=100_000)
    first_ids = rng.integers(3, 128_256, size=int(in_lens[0]))
    assert built[0].prompt == " ".join(f"t{i}" for i in first_ids)
    assert len({r.prompt_len for r in built}) > 1  # lengths vary: drawn for all 100,000


def test_random_range_ratio_varies_lengths_within_bounds() -> None:
    reqs = load_requests(
        tokenizer=WORDS,
        dataset="random",
        num_prompts=200,
        seed=0,
        random_input_len=100,
        random_output_len=50,
        random_range_ratio=0.5,
    )
    assert {50 <= r.prompt_len <= 150 and 25 <= r.output_len <= 75 for r in reqs} == {True}
    assert len({r.prompt_len for r in reqs}) > 10


def test_custom_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(
        '{"prompt": "hello there", "output_len": 7}\n\n{"prompt": "bye", "output_len": 3}\n'
    )
    reqs = load_requests(
        dataset="custom", num_prompts=5, seed=0, dataset_path=path, tokenizer=WORDS
    )
    assert len(reqs) == 5  # two entries, repeated
    assert {(r.prompt, r.output_len) for r in reqs} == {("hello there", 7), ("bye", 3)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty dataset file"),
        ("   \n\n", "empty dataset file"),
        ('{"prompt": "x", "output_len": 3}\n{not json}\n', r"w.jsonl:2: not valid JSON"),
        (
            '{"prompt": "x", "output_len": 0}\n',
            r"w.jsonl:1: 'output_len' must be a positive integer",
        ),
        ('{"prompt": "", "output_len": 3}\n', r"'prompt' must be a non-empty string"),
        ("[1, 2]\n", "expected an object"),
    ],
)
def test_custom_jsonl_errors_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_requests(dataset="custom", num_prompts=1, seed=0, dataset_path=path, tokenizer=WORDS)


def test_missing_dataset_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_requests(
            dataset="custom",
            num_prompts=1,
            seed=0,
            dataset_path=tmp_path / "nope.jsonl",
            tokenizer=WORDS,
        )


def test_sharegpt_takes_first_two_turns_and_filters(tmp_path: Path) -> None:
    data = [
        {
            "conversations": [
                {"from": "human", "value": "What is 2+2?"},
                {"from": "gpt", "value": "x" * 40},
            ]
        },
        {"conversations": [{"from": "human", "value": "one turn only"}]},
        {
            "conversations": [
                {"from": "human", "value": "short answer"},
                {"from": "gpt", "value": "ok"},
            ]
        },
        {"id": "no conversations"},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    tokenizer = deepseek()
    reqs = load_requests(
        dataset="sharegpt", num_prompts=3, seed=0, dataset_path=path, tokenizer=tokenizer
    )
    # Only the first conversation is usable ("ok" is under 4 tokens); lengths are the
    # tokenizer's: the prompt as the server counts it (BOS included), the answer's tokens.
    expected = ("What is 2+2?", tokenizer.count("What is 2+2?"), len(tokenizer.encode("x" * 40)))
    assert {(r.prompt, r.prompt_len, r.output_len) for r in reqs} == {expected}
    assert expected[1] == len(tokenizer.encode("What is 2+2?")) + 1 and expected[2] >= 4
    fixed = load_requests(
        tokenizer=WORDS,
        dataset="sharegpt",
        num_prompts=1,
        seed=0,
        dataset_path=path,
        sharegpt_output_len=64,
    )
    assert fixed[0].output_len == 64
    path.write_text('{"not": "a list"}')
    with pytest.raises(DatasetError, match="JSON list"):
        load_requests(dataset="sharegpt", num_prompts=1, seed=0, dataset_path=path, tokenizer=WORDS)


def test_arrivals_closed_loop_all_at_zero() -> None:
    assert arrival_offsets_s(3, request_rate=math.inf, burstiness=1.0, seed=0) == [0.0, 0.0, 0.0]


def test_arrivals_hit_the_offered_rate_and_burstiness_sets_the_spread() -> None:
    n, rate = 20_000, 50.0
    for burstiness in (0.25, 1.0, 4.0):
        offsets = np.array(arrival_offsets_s(n, request_rate=rate, burstiness=burstiness, seed=1))
        assert offsets[-1] == pytest.approx(n / rate)  # rescaled as vLLM does
        assert np.all(np.diff(offsets) >= 0)
        gaps = np.diff(offsets)
        # Gamma with shape k has a coefficient of variation of 1/sqrt(k).
        assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)
    a = arrival_offsets_s(10, request_rate=rate, burstiness=1.0, seed=3)
    assert a == arrival_offsets_s(10, request_rate=rate, burstiness=1.0, seed=3)
    assert a != arrival_offsets_s(10, request_rate=rate, burstiness=1.0, seed=4)


def test_config_dump_is_json_and_round_trips() -> None:
    cfg = BenchConfig(base_url="http://127.0.0.1:8000/", exporter_urls=["http://127.0.0.1:9400"])
    dumped = cfg.model_dump()
    assert dumped["request_rate"] == "inf" and dumped["base_url"] == "http://127.0.0.1:8000"
    text = json.dumps(dumped, allow_nan=False)
    assert BenchConfig.model_validate(json.loads(text)) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"base_url": "127.0.0.1:8000"},
        {"base_url": "http://x", "dataset_name": "custom"},
        {"base_url": "http://x", "num_prompts": 0},
        {"base_url": "http://x", "endpoint": "v1/completions"},
        {"base_url": "http://x", "exporter_urls": ["ftp://y"]},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BenchConfig.model_validate(bad)


@pytest.mark.parametrize("length", [128, 512, 1536])
def test_random_prompts_encode_to_exactly_the_requested_length_with_a_real_tokenizer(
    length: int,
) -> None:
    tokenizer = deepseek()
    reqs = load_requests(
        dataset="random",
        num_prompts=20,
        seed=3,
        random_input_len=length,
        random_output_len=8,
        tokenizer=tokenizer,
    )
    # What the server will count: the prompt's tokens plus the BOS its config asks for.
    counted = [tokenizer.count(r.prompt) for r in reqs]
    assert counted == [length] * 20 == [r.prompt_len for r in reqs]
    assert len({r.prompt for r in reqs}) == 20
    # The words the dummy model's vocabulary makes (one token each) are ~3 BPE tokens apiece.
    words = load_requests(
        dataset="random", num_prompts=1, seed=3, random_input_len=512, random_output_len=8,
        tokenizer=WORDS,
    )  # fmt: skip
    assert tokenizer.count(words[0].prompt) > 2.5 * 512


@pytest.mark.parametrize(
    ("tokenizer_class", "added"),
    [("LlamaTokenizerFast", 1), ("GemmaTokenizer", 1), ("PreTrainedTokenizerFast", 0)],
)
def test_add_bos_token_counts_only_where_the_tokenizer_class_honours_it(
    tmp_path: Path, tokenizer_class: str, added: int
) -> None:
    """transformers' Llama and Gemma tokenizers add the BOS `add_bos_token` asks for; the
    generic PreTrainedTokenizerFast ignores the flag (on the H100, vLLM counted 127 tokens for
    127 prompt tokens of such a tokenizer asking for a BOS)."""
    from jouletune.tokenizer import load_tokenizer

    source = deepseek()
    folder = tmp_path / tokenizer_class
    folder.mkdir()
    real = DEEPSEEK_DIR
    (folder / "tokenizer.json").write_bytes((real / "tokenizer.json").read_bytes())
    config = json.loads((real / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": tokenizer_class})
    )
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.num_special_tokens == added
    assert tokenizer.count("hello world") == len(source.encode("hello world")) + added


def test_an_unloadable_tokenizer_is_one_line_naming_it(tmp_path: Path) -> None:
    from jouletune.tokenizer import TokenizerError, load_tokenizer

    (tmp_path / "tokenizer.json").write_text("{not json")
    for name, reason in (
        (str(tmp_path), "is not one"),
        (str(tmp_path / "missing"), "no such file or directory"),
        (str(tmp_path.parent), "has no tokenizer.json"),
    ):
        with pytest.raises(TokenizerError) as err:
            load_tokenizer(name)
        message = str(err.value)
        assert message.startswith(f"tokenizer {name}: ") and reason in message
        assert "\n" not in message


class _Recording(list[SampleRequest]):
    """Prompts that record which thread built (first read) each one."""

    def __init__(self, n: int) -> None:
        super().__init__(
            SampleRequest(prompt=f"t{i}", prompt_len=1, output_len=1) for i in range(n)
        )
        self.threads: dict[int, str] = {}

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, int):
            self.threads.setdefault(index, threading.current_thread().name)
        return super().__getitem__(index)


def test_prompts_are_built_ahead_in_a_worker_thread() -> None:
    """The event loop never builds a prompt: a real tokenizer's costs milliseconds, which would
    space out the sends of streams that finished in one step (seen on the H100)."""
    from jouletune.loadgen._dispatch import Prefetch

    prompts = _Recording(100)
    sent = [0]

    async def run() -> None:
        prefetch = Prefetch(prompts, ahead=10, sent=lambda: sent[0])
        await prefetch.fill()
        assert sorted(prompts.threads) == list(range(10))
        prefetch.start()
        while sent[0] < 30:
            sent[0] += 1
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        await prefetch.stop()

    asyncio.run(run())
    main = threading.main_thread().name
    assert 40 <= len(prompts.threads) <= 41 and main not in prompts.threads.values()
