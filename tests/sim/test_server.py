"""A real `jouletune sim-server` process on loopback, read by real clients.

The OpenAI Python client parses the streams, prometheus_client's parser reads `/metrics`
next to vLLM 0.24's real exposition, and `/sim/*` is checked against what the clients saw.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Proc, sim_server

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EXPOSITION = (
    Path(__file__).resolve().parents[2]
    / "benchmarks"
    / "results"
    / "h100-calibration"
    / "vllm0.24_metrics_exposition.txt"
)
MAX_NUM_SEQS = 4


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    args = ["--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", "2048"]
    args += ["--load-format", "dummy", "--enforce-eager"]  # vLLM flags the sim ignores
    with sim_server(MODEL, *args) as proc:
        yield proc


def _client(server: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _get(server: Proc, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=10) as resp:
        return json.loads(resp.read())


def _put(server: Proc, path: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_lists_the_served_model(server: Proc) -> None:
    models = _client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_streamed_completion_parses_with_the_openai_client(server: Proc) -> None:
    stream = _client(server).completions.create(
        model=MODEL,
        prompt="t5 t6 t7 t8 t9",
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "min_tokens": 12},
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 12  # one token per chunk
    assert token_chunks and all(len(c.choices[0].text.split()) == 1 for c in token_chunks)
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 11 + ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 12, 17)


def test_streamed_chat_parses_with_the_openai_client(server: Proc) -> None:
    stream = _client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "t1 t2 t3"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    content = [d.content for d in deltas if d.content]
    assert len(content) == 6
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == 3


def test_plain_completion_counts_a_token_id_prompt(server: Proc) -> None:
    out = _client(server).completions.create(model=MODEL, prompt=list(range(3, 40)), max_tokens=5)
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (37, 5)
    assert len(out.choices[0].text.split()) == 5
    assert out.choices[0].finish_reason == "length"


def test_without_max_tokens_the_request_fills_the_context(server: Proc) -> None:
    out = _client(server).completions.create(model=MODEL, prompt="t3 " * 2040)
    assert out.usage is not None and out.usage.completion_tokens == 2048 - 2040


def test_bad_requests_get_openai_errors(server: Proc) -> None:
    client = _client(server)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 2048"):
        client.completions.create(model=MODEL, prompt="t3 t4", max_tokens=5000)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="other/model", prompt="t3", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="t3", max_tokens=0)


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("vllm:")}


def test_metrics_use_vllms_names_types_labels_and_buckets(server: Proc) -> None:
    _client(server).completions.create(model=MODEL, prompt="t3 t4 t5", max_tokens=3)
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        ours = _families(resp.read().decode())
    real = _families(EXPOSITION.read_text())
    required = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:generation_tokens": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:request_success": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram",
    }
    for name, kind in required.items():
        assert ours[name].type == kind == real[name].type, name
    assert set(ours) <= set(real), f"names vLLM does not have: {set(ours) - set(real)}"
    for name, fam in ours.items():
        assert fam.type == real[name].type, name
        ours_keys = {frozenset(s.labels) for s in fam.samples}
        real_keys = {frozenset(s.labels) for s in real[name].samples}
        assert ours_keys == real_keys, name
        if fam.type == "histogram":  # same max_model_len (2048) as the real server
            les = [s.labels["le"] for s in fam.samples if s.name.endswith("_bucket")]
            real_les = [s.labels["le"] for s in real[name].samples if s.name.endswith("_bucket")]
            assert les == real_les, name
    labels = next(s.labels for s in ours["vllm:generation_tokens"].samples)
    assert labels == {"engine": "0", "model_name": MODEL}
    total = {s.name: s.value for s in ours["vllm:generation_tokens"].samples}
    assert total["vllm:generation_tokens_total"] >= 3


async def _poll_while_streaming(url: str, n_requests: int) -> tuple[list[float], list[float], int]:
    running: list[float] = []
    waiting: list[float] = []
    done = 0
    body = {"model": MODEL, "prompt": "t3 " * 100, "max_tokens": 120, "stream": True}

    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal done
            async with session.post(url + "/v1/completions", json=body) as resp:
                async for _ in resp.content:
                    pass
            done += 1

        tasks = [asyncio.create_task(one()) for _ in range(n_requests)]
        while done < n_requests:
            async with session.get(url + "/metrics") as resp:
                fams = _families(await resp.text())
            running.append(fams["vllm:num_requests_running"].samples[0].value)
            waiting.append(fams["vllm:num_requests_waiting"].samples[0].value)
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
    return running, waiting, done


def test_batch_is_bounded_by_max_num_seqs(server: Proc) -> None:
    running, waiting, done = asyncio.run(_poll_while_streaming(server.url, 3 * MAX_NUM_SEQS))
    assert done == 3 * MAX_NUM_SEQS
    assert max(running) == MAX_NUM_SEQS
    assert max(waiting) > 0
    assert running[-1] <= MAX_NUM_SEQS


def test_truth_matches_what_the_client_saw(server: Proc) -> None:
    start_s = time.time()
    before = _get(server, "/sim/gpus")["gpus"][0]
    seen: dict[str, int] = {}
    client = _client(server)
    for n in (4, 7, 9):
        chunks = list(
            client.completions.create(
                model=MODEL,
                prompt="t3 t4 t5 t6",
                max_tokens=n,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        seen[chunks[0].id] = usage.completion_tokens
    after = _get(server, "/sim/gpus")["gpus"][0]
    end_s = time.time()
    truth = _get(server, f"/sim/truth?start_unix_s={start_s}&end_unix_s={end_s}")
    records = {r["request_id"]: r for r in truth["requests"]}
    assert records.keys() == seen.keys()
    for request_id, tokens in seen.items():
        rec = records[request_id]
        assert rec["output_tokens"] == tokens
        assert start_s <= rec["arrival_unix_s"] < rec["first_token_unix_s"]
        assert rec["first_token_unix_s"] <= rec["last_token_unix_s"] <= end_s
    assert truth["output_tokens"] == sum(seen.values())
    # The truth's energy is the integral of the same counter /sim/gpus reports.
    window = _get(
        server,
        f"/sim/truth?start_unix_s={before['timestamp_s']}&end_unix_s={after['timestamp_s']}",
    )
    assert window["energy_j"] == pytest.approx(after["energy_j"] - before["energy_j"], rel=1e-9)
    assert window["energy_j"] > 0


def test_truth_rejects_bad_windows(server: Proc) -> None:
    for query in (
        "",
        "?start_unix_s=5",
        "?start_unix_s=a&end_unix_s=2",
        "?start_unix_s=9&end_unix_s=2",
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(server, "/sim/truth" + query)
        assert err.value.code == 400


def _prefill_ttft_s(server: Proc, word: str) -> float:
    """Server-side TTFT of a 1,900-token prompt of `word`: one compute-bound prefill step."""
    start_s = time.time()
    out = _client(server).completions.create(model=MODEL, prompt=f"{word} " * 1900, max_tokens=2)
    end_s = time.time()
    truth = _get(server, f"/sim/truth?start_unix_s={start_s}&end_unix_s={end_s}")
    (rec,) = [r for r in truth["requests"] if r["request_id"] == out.id]
    return float(rec["first_token_unix_s"] - rec["arrival_unix_s"])


def test_power_limit_changes_at_run_time_and_slows_prefill(server: Proc) -> None:
    # distinct prompts: a repeated one would be served from the prefix cache
    free_s = _prefill_ttft_s(server, "t3")
    status, sample = _put(server, "/sim/gpus/0/power-limit", {"watts": 250})
    assert status == 200 and sample["power_limit_w"] == 250
    try:
        assert _get(server, "/sim/gpus")["gpus"][0]["power_limit_w"] == 250
        capped_s = _prefill_ttft_s(server, "t4")
    finally:
        _put(server, "/sim/gpus/0/power-limit", {"watts": 700})
    assert capped_s > 1.3 * free_s
    assert _put(server, "/sim/gpus/0/power-limit", {"watts": 50})[0] == 400
    assert _put(server, "/sim/gpus/0/power-limit", {"volts": 5})[0] == 400
    assert _put(server, "/sim/gpus/3/power-limit", {"watts": 300})[0] == 404


def test_a_clock_lock_changes_at_run_time_slows_prefill_and_is_undone(server: Proc) -> None:
    free_s = _prefill_ttft_s(server, "t5")
    status, entry = _put(server, "/sim/gpus/0/sm-clock-lock", {"mhz": 990})
    assert status == 200 and entry["sm_clock_lock_mhz"] == 990
    assert entry["sm_clock_range"] == {"min_mhz": 345, "max_mhz": 1980}
    try:
        (gpu,) = _get(server, "/sim/gpus")["gpus"]
        assert gpu["sm_clock_lock_mhz"] == 990 and gpu["sm_clock_hz"] <= 990e6
        locked_s = _prefill_ttft_s(server, "t6")
    finally:
        status, entry = _put(server, "/sim/gpus/0/sm-clock-lock", {"mhz": None})
    assert status == 200 and entry["sm_clock_lock_mhz"] is None
    # A prefill step is compute-bound: half the clock, about twice its time.
    assert locked_s > 1.3 * free_s
    for bad in ({"mhz": 100}, {"mhz": 1200.5}, {"mhz": "1200"}, {"mhz": math.inf}, {"hz": 1}):
        assert _put(server, "/sim/gpus/0/sm-clock-lock", bad)[0] == 400, bad
    assert _put(server, "/sim/gpus/3/sm-clock-lock", {"mhz": 1200})[0] == 404


def _metric(server: Proc, name: str, **labels: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        fams = _families(resp.read().decode())
    base = name.removesuffix("_total")
    for sample in fams[base].samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise KeyError(name)


async def _open_and_drop(url: str, n: int) -> None:
    """Start `n` long streams, read their first chunk, then drop the connections."""
    body = {"model": MODEL, "prompt": "t3 t4", "max_tokens": 1900, "stream": True}
    async with aiohttp.ClientSession() as session:
        responses = [await session.post(url + "/v1/completions", json=body) for _ in range(n)]
        for resp in responses:
            await resp.content.readline()
        for resp in responses:
            resp.close()


def test_cancelled_streams_are_aborted_and_the_server_drains(server: Proc) -> None:
    aborted_before = _metric(server, "vllm:request_success_total", finished_reason="abort")
    asyncio.run(_open_and_drop(server.url, 3))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if _metric(server, "vllm:num_requests_running") == 0:
            break
        time.sleep(0.02)
    assert _metric(server, "vllm:num_requests_running") == 0
    assert _metric(server, "vllm:num_requests_waiting") == 0
    aborted = _metric(server, "vllm:request_success_total", finished_reason="abort")
    assert aborted - aborted_before == 3


def test_live_steps_keep_the_model_clock_without_drift(server: Proc) -> None:
    """300 back-to-back steps: the client sees the last token when the model says, not later."""
    start_s = time.time()
    last_seen_s = 0.0
    request_id = ""
    for chunk in _client(server).completions.create(
        model=MODEL, prompt="t3 t4 t5", max_tokens=300, stream=True
    ):
        request_id = chunk.id
        if chunk.choices:
            last_seen_s = time.time()
    truth = _get(server, f"/sim/truth?start_unix_s={start_s}&end_unix_s={time.time()}")
    (rec,) = [r for r in truth["requests"] if r["request_id"] == request_id]
    decode_s = rec["last_token_unix_s"] - rec["first_token_unix_s"]
    # One Llama-8B decode step on the simulated H100 takes ~6.4 ms (the calibration's C=1).
    assert decode_s / 299 == pytest.approx(6.4e-3, rel=0.05)
    # Wake-ups run up to ~1 ms late, but each step starts where the last ended on the model's
    # clock, so 300 steps do not add up to a visible delay.
    assert 0 <= last_seen_s - rec["last_token_unix_s"] < 0.05
