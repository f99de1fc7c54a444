"""Simulator fidelity: replay every committed real H100 `jouletune bench` point on the simulator.

    python benchmarks/sim_fidelity.py [--results benchmarks/results/h100-vllm ...]
                                      [--no-prefix-caching]

For each server of the real sweep (one `vllm serve --max-num-seqs N --max-model-len 2048` per
N, its workloads run one after another, in the order their windows were measured) this
builds the same server in the simulator (Llama-3.1-8B shape on a simulated h100-80gb, vLLM
0.24's H100 defaults otherwise: 8192-token chunked-prefill budget, gpu_memory_utilization
0.9, prefix caching on) and replays each run exactly as `jouletune bench` drove it: the same
prompts (rebuilt from the result's dataset, lengths and seed with jouletune's own workload
code, so prompts that shared a prefix on the H100 share it here), N closed-loop streams on
one queue, no send after `--duration` seconds. The engine runs on a virtual clock
(`jouletune.sim.ClosedLoopReplay`), so the whole sweep takes seconds. The replayed requests
then go through the load generator's own steady-state window and metrics
(`jouletune.loadgen.steady_state_window`, `compute_metrics`) and the energy is the simulated
GPUs' exact integral over that window, so both sides are measured by the same rule.

Prints one row per measurement: J/output-token, ITL p50, TTFT p50 and average power, real
vs simulated, and the error. A point measured more than once (same max_num_seqs, clients,
lengths and seed, on separate servers) is judged on the mean of its runs; its runs are
listed with the range of TTFT p50 predictions that would be within 25% of every one of them
(none, where the runs differ by more). Exits 1 when J/output-token or ITL p50 misses by more
than 10%, or TTFT p50 by more than 25%, at any point; 2 on bad input (no results, an
unreadable file).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import os
import platform
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dummy_tokenizer import dummy_model_tokenizer  # this script's folder
from result_files import find_results, read_json, result_stem

from jouletune import __version__
from jouletune.gpu.simulated import GpuModel, gpu_model
from jouletune.loadgen import RequestRecord, compute_metrics, load_requests, steady_state_window
from jouletune.models import model_arch
from jouletune.profile import load_profile
from jouletune.sim import (
    DEFAULT_PERF,
    ClientRequest,
    ClosedLoopReplay,
    EngineConfig,
    PerfConstants,
    TracedRequest,
    apply_profile,
    prompt_block_hashes,
)
from jouletune.tokenizer import WORDS, PromptTokenizer, WordTokenizer

_RESULTS = Path(__file__).resolve().parent / "results" / "h100-vllm"
# The tokenizer sessions' runs (tokenizer_session.sh): DeepSeek-V3's BPE vocabulary on one
# server of 256 sequences; `before-prefetch/` is left out, its client built each prompt on its
# event loop as a stream needed it, which staggered the sends the replay makes together.
_TOKENIZER_RESULTS = _RESULTS.parent / "h100-tokenizer"
# vLLM's renderer time is the tokenizer's encode time: DeepSeek-V3's BPE encodes a 512-token
# prompt 2.5x slower per token than the word vocabulary (benchmarks/tokenizer_encode_cost.py,
# results/tokenizer-encode-cost.txt), so its runs' renderer cost is the measured word one x2.5.
_BPE_RENDER_RATIO = 2.5
# Until the tokenizer's batch calls (2026-12-06), the bench built BPE prompts in a thread that
# held the GIL and stalled the event loop stamping the chunks: at varied lengths, where a
# prompt is built every step or two, its ITL p50 read 14.4-14.8 ms where vLLM's client read
# 12.2-12.7 on the same server (reps/). Those runs' ITL is not gated; `fixed-client/` has the
# runs measured since, with vLLM's client beside them (benchmarks/client_prompt_gil.py), and
# `fixed-client-b/` more of them.
_FIXED_CLIENT = "fixed-client"
# The held-out runs of a calibration session (calibrate_heldout.py), BPE prompts: a folder
# with `calibrate/profile.json` (an H200 session's `sweep/` is not an H100 point).
_HELDOUT_RESULTS = _RESULTS.parent / "h100-calibrate-heldout"
_HELDOUT_PATTERNS = ("sweep/c*", "held/c*_w*")
# 512 streams on one and on two API-server processes (campaign points; vLLM's log names the
# count): the front end, not the GPU, sets the batch there.
_API_SERVER_RESULTS = _RESULTS.parent / "h100-api-server"
_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
H100 = gpu_model("h100-80gb")
# Gated figures and the bound on each one's error, in the order gate() returns them.
_GATED = ("J/output-token", "ITL p50", "TTFT p50")
_TOLERANCES = (0.10, 0.10, 0.25)
# The real servers' flags (results README): --max-num-seqs N --max-model-len 2048; the rest
# are vLLM 0.24's defaults on an H100 (EngineArgs.get_batch_defaults: 8192 batched tokens).
_MAX_MODEL_LEN = 2048
_MAX_NUM_BATCHED_TOKENS = 8192
_GPU_MEMORY_UTILIZATION = 0.92


class InputError(Exception):
    """Bad input; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class Figures:
    """The compared figures of one point (real or simulated).

    Attributes:
        j_per_output_token: energy over the window / output tokens in it, joules.
        itl_ms_p50: median inter-token latency, ms.
        ttft_ms_p50: median time to first token, ms.
        avg_power_w: average GPU power over the window, watts.
        output_tok_s: output tokens per second over the window.
        avg_batch_size: time-weighted running requests over the window.
        itl_ms_p99: 99th-percentile inter-token latency, ms (a step with a prefill chunk).
        tpot_ms_mean: mean time per output token after the first, ms.
        e2el_ms_p50: median end-to-end latency, ms.
    """

    j_per_output_token: float
    itl_ms_p50: float
    ttft_ms_p50: float
    avg_power_w: float
    output_tok_s: float
    avg_batch_size: float
    itl_ms_p99: float
    tpot_ms_mean: float
    e2el_ms_p50: float


@dataclass(frozen=True, kw_only=True)
class RealPoint:
    """One committed `jouletune bench` result and what the replay needs from it."""

    name: str
    server: str
    concurrency: int
    max_num_seqs: int
    input_len: int
    output_len: int
    range_ratio: float
    seed: int
    num_prompts: int
    sent: int
    duration_s: float
    window_start_unix_s: float
    figures: Figures
    path: Path
    word_prompts: bool = True
    model_tokenizer: bool = False
    stalled_client: bool = False
    api_server_count: int = 1  # the server's --api-server-count


Row = tuple[RealPoint, Figures]


def load_points(folder: Path) -> list[RealPoint]:
    """Every bench result in `folder`; raises InputError on a bad file.

    `[SUB/]nN_wIN-OUT.json` are campaign points: one server per N and folder, its workloads
    in turn, max_num_seqs N. `STUDY/trials/NNNN/result.json` are the completed, uncapped
    trials that `STUDY/trials.csv` lists: read-only tune trials, one server each (changing
    max_num_seqs restarts vLLM).
    """
    points = []
    for path in find_results(folder, "**/n*_w*"):
        sub = path.parent.relative_to(folder).as_posix()
        prefix = "" if sub == "." else f"{sub}/"
        point = _point(path, name=prefix + result_stem(path), server="", max_num_seqs=None)
        api_servers = _api_server_count(path.parent / f"vllm_n{point.concurrency}.log.gz")
        server = f"{prefix}n{point.concurrency}"
        points.append(replace(point, server=server, api_server_count=api_servers))
    for table in sorted(folder.glob("*/trials.csv")):
        points += _trial_points(table)
    for path in find_results(folder, "**/jouletune_c*"):
        sub = path.parent.relative_to(folder).as_posix()
        if sub == "before-prefetch":
            continue
        stem = result_stem(path)
        name = "tokenizer/" + (stem if sub == "." else f"{sub}/{stem}")
        point = replace(_point(path, name=name, server=name), word_prompts=False)
        stalled = point.range_ratio > 0 and not sub.startswith(_FIXED_CLIENT)
        points.append(replace(point, stalled_client=stalled))
    if (folder / "calibrate" / "profile.json").is_file():
        for pattern in _HELDOUT_PATTERNS:
            points += [_heldout_point(path, folder) for path in find_results(folder, pattern)]
    if not points:
        raise InputError(
            f"no bench results (n*_w*.json[.gz], */trials.csv, jouletune_c*, or a calibration's"
            f" sweep/ and held/) in {folder}"
        )
    return points


def _api_server_count(log: Path) -> int:
    """The `--api-server-count` a campaign server ran with, from the flags vLLM logs at its
    start ("non-default args: {...}"); 1, vLLM's default, without a log or the flag."""
    if not log.is_file():
        return 1
    with gzip.open(log, "rt", errors="replace") as f:
        for line in f:
            if "non-default args" in line:
                found = re.search(r"'api_server_count': (\d+)", line)
                return int(found[1]) if found else 1
    return 1


def _heldout_point(path: Path, folder: Path) -> RealPoint:
    """A held-out run of a calibration session (`calibrate_heldout.py`): BPE prompts, one
    server of `--server-max-num-seqs` for the whole session, its runs in the order they ran."""
    name = f"{folder.name}/{path.parent.name}/{result_stem(path)}"
    return replace(_point(path, name=name, server=folder.as_posix()), word_prompts=False)


def _trial_points(table: Path) -> list[RealPoint]:
    study = table.parent.name
    try:
        with table.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["state"] == "complete"]
    except (OSError, KeyError, csv.Error) as err:
        raise InputError(f"{table}: not a trials.csv ({err!r})") from None
    points = []
    for row in rows:
        if row["power_limit_w"]:
            continue  # a capped trial shares its server with others: not replayed
        number = int(row["number"])
        path = table.parent / "trials" / f"{number:04d}" / "result.json"
        point = _point(
            path,
            name=f"{study}#{number}",
            server=path.as_posix(),
            max_num_seqs=int(row["max_num_seqs"]),
        )
        lengths = f"n{point.max_num_seqs}_w{point.input_len}-{point.output_len}"
        points.append(replace(point, name=f"{point.name} {lengths}"))
    return points


def _point(path: Path, *, name: str, server: str, max_num_seqs: int | None = None) -> RealPoint:
    try:
        d: dict[str, Any] = read_json(path)
        cfg = d["config"]
        if cfg["dataset_name"] != "random" or cfg["request_rate"] != "inf":
            raise InputError(f"{path}: only closed-loop random workloads are replayed")
        concurrency = int(cfg["max_concurrency"])
        return RealPoint(
            path=path,
            name=name,
            server=server,
            concurrency=concurrency,
            max_num_seqs=max_num_seqs or cfg.get("server_max_num_seqs") or concurrency,
            input_len=int(cfg["random_input_len"]),
            output_len=int(cfg["random_output_len"]),
            range_ratio=float(cfg["random_range_ratio"]),
            seed=int(cfg["seed"]),
            num_prompts=int(cfg["num_prompts"]),
            sent=int(d["workload"]["sent"]),
            duration_s=float(cfg["duration_s"] or math.inf),  # None: bound by count
            window_start_unix_s=float(d["window"]["start_unix_s"]),
            model_tokenizer=d["workload"].get("tokenizer") not in (None, WORDS),
            figures=Figures(
                j_per_output_token=float(d["energy_per_output_token_j"]),
                itl_ms_p50=float(d["itl_ms"]["p50"]),
                ttft_ms_p50=float(d["ttft_ms"]["p50"]),
                avg_power_w=float(d["avg_power_w"]),
                output_tok_s=float(d["output_token_throughput"]),
                avg_batch_size=float(d["avg_batch_size"]),
                itl_ms_p99=float(d["itl_ms"]["p99"]),
                tpot_ms_mean=float(d["tpot_ms"]["mean"]),
                e2el_ms_p50=float(d["e2el_ms"]["p50"]),
            ),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a bench result JSON ({err!r})") from None


def _engine_config(
    max_num_seqs: int,
    *,
    prefix_caching: bool,
    perf: PerfConstants = DEFAULT_PERF,
    gpu: GpuModel = H100,
) -> EngineConfig:
    return EngineConfig(
        arch=model_arch(_MODEL),
        gpu=gpu,
        tensor_parallel_size=1,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=_MAX_NUM_BATCHED_TOKENS,
        max_model_len=_MAX_MODEL_LEN,
        gpu_memory_utilization=_GPU_MEMORY_UTILIZATION,
        perf=perf,
        enable_prefix_caching=prefix_caching,
    )


def _client_requests(point: RealPoint) -> list[ClientRequest]:
    # Every length is drawn before any prompt (jouletune.loadgen), whatever the vocabulary,
    # and prompts are built as read: the first `sent` of the bench's `num_prompts` requests
    # are rebuilt exactly without building the rest. A bench that loaded the served model's
    # tokenizer built them as vLLM's random dataset does (prompt k from its own offset, so a
    # longer prompt of the same seed and index starts with the shorter one); before that it
    # drew every prompt's words from one stream (prompt k follows prompts 0..k-1).
    samples = load_requests(
        dataset="random",
        num_prompts=point.num_prompts,
        seed=point.seed,
        random_input_len=point.input_len,
        random_output_len=point.output_len,
        random_range_ratio=point.range_ratio,
        tokenizer=_prompt_tokenizer(point),
    )[: point.sent]
    return [
        ClientRequest(
            prompt_tokens=s.prompt_len,
            max_tokens=s.output_len,
            block_hashes=prompt_block_hashes(
                s.prompt.split() if point.word_prompts else _bpe_prompt(point.seed, i, s.prompt_len)
            ),
        )
        for i, s in enumerate(samples)
    ]


def _prompt_tokenizer(point: RealPoint) -> PromptTokenizer:
    """What rebuilds the prompts `point`'s bench sent: the dummy model's own tokenizer where
    the bench loaded it, else the one-stream word vocabulary (a BPE run's prompts stand in as
    `_bpe_prompt`s: only their lengths are rebuilt here)."""
    if point.model_tokenizer and point.word_prompts:
        return dummy_model_tokenizer()
    return WordTokenizer()


def _bpe_prompt(seed: int, index: int, length: int) -> list[tuple[int, int, int]]:
    """Stand-ins for a BPE run's prompt tokens. Its prompts start at random offsets in the
    vocabulary, so no two of a run share a prefix block; a later run with the same seed sends
    the same prompts again, which vLLM's prefix cache then serves."""
    return [(seed, index, k) for k in range(length)]


# One replayed run: the real run, the simulated server after it (its steps and GPUs so far),
# and the requests the run sent.
ReplayedRun = tuple[RealPoint, ClosedLoopReplay, list[TracedRequest]]


def replay_runs(
    points: list[RealPoint],
    *,
    prefix_caching: bool = True,
    perf: PerfConstants = DEFAULT_PERF,
    gpu: GpuModel = H100,
    api_server_count: int | None = None,
) -> Iterator[ReplayedRun]:
    """Replay one real server's runs, in their order, on one simulated server with
    `api_server_count` API-server processes (vLLM's `--api-server-count`; by default the
    count the real server ran with)."""
    if not points[0].word_prompts:
        perf = replace(perf, render_s_per_token=perf.render_s_per_token * _BPE_RENDER_RATIO)
    config = _engine_config(
        points[0].max_num_seqs, prefix_caching=prefix_caching, perf=perf, gpu=gpu
    )
    config = replace(config, api_server_count=api_server_count or points[0].api_server_count)
    replay = ClosedLoopReplay(config)
    for point in points:
        traced = replay.run(
            _client_requests(point), concurrency=point.concurrency, duration_s=point.duration_s
        )
        yield point, replay, traced


def simulate_server(
    points: list[RealPoint],
    *,
    prefix_caching: bool = True,
    perf: PerfConstants = DEFAULT_PERF,
    gpu: GpuModel = H100,
    api_server_count: int | None = None,
) -> list[Figures]:
    """The figures of one real server's runs, replayed in their order on one simulated server."""
    runs = replay_runs(
        points, prefix_caching=prefix_caching, perf=perf, gpu=gpu, api_server_count=api_server_count
    )
    return [_measure(replay, traced, point.concurrency) for point, replay, traced in runs]


def replay_point(
    points: list[RealPoint], name: str, *, perf: PerfConstants = DEFAULT_PERF
) -> ReplayedRun | None:
    """Point `name` replayed as the gate replays it: on its server's replay, after the runs
    that server measured before it (None: no such point)."""
    point = next((p for p in points if p.name == name), None)
    if point is None:
        return None
    runs = sorted((p for p in points if p.server == point.server), key=_started)
    *_, last = replay_runs(runs[: runs.index(point) + 1], perf=perf)
    return last


def _started(point: RealPoint) -> float:
    return point.window_start_unix_s


def replay_all(
    points: list[RealPoint],
    *,
    prefix_caching: bool = True,
    perf: PerfConstants = DEFAULT_PERF,
    gpu: GpuModel = H100,
) -> list[Row]:
    """Every point next to its replay; each real server replayed once, its runs in order.

    `perf` and `gpu` are the simulator's constants and GPU (`benchmarks/sim_frontend_fit.py`
    varies the constants; `--gpu-profile` sets both from a calibration)."""
    by_server: dict[str, list[RealPoint]] = defaultdict(list)
    for point in points:
        by_server[point.server].append(point)
    rows: list[Row] = []
    for server in sorted(by_server, key=lambda k: (by_server[k][0].concurrency, k)):
        runs = sorted(by_server[server], key=_started)
        figures = simulate_server(runs, prefix_caching=prefix_caching, perf=perf, gpu=gpu)
        rows += zip(runs, figures, strict=True)
    return rows


def client_records(traced: list[TracedRequest]) -> list[RequestRecord]:
    """The replayed requests as the load generator records them (one chunk per token)."""
    return [
        RequestRecord(
            index=t.index,
            request_id=f"r{t.index}",
            success=True,
            error=None,
            send_s=t.send_s,
            end_s=t.token_times_s[-1],
            chunk_times_s=t.token_times_s,
            output_tokens=len(t.token_times_s),
            prompt_tokens=t.prompt_tokens,
            expected_output_len=len(t.token_times_s),
        )
        for t in traced
    ]


def _measure(replay: ClosedLoopReplay, traced: list[TracedRequest], concurrency: int) -> Figures:
    records = client_records(traced)
    window = steady_state_window(records, max_concurrency=concurrency, closed_loop=True)
    metrics = compute_metrics(records, window)
    tokens = metrics.window_output_tokens
    itl, ttft = metrics.itl_ms.p50, metrics.ttft_ms.p50
    itl99, tpot, e2el = metrics.itl_ms.p99, metrics.tpot_ms.mean, metrics.e2el_ms.p50
    assert tokens and itl is not None and ttft is not None, "a window without tokens"
    assert itl99 is not None and tpot is not None and e2el is not None, "a window without tokens"
    energy_j = replay.energy_j(window.start_s, window.end_s)
    batch = 0.0
    for step in replay.steps:
        overlap_s = min(step.end_s, window.end_s) - max(step.start_s, window.start_s)
        if overlap_s > 0:
            batch += step.batch.num_seqs * overlap_s
    return Figures(
        j_per_output_token=energy_j / tokens,
        itl_ms_p50=itl,
        ttft_ms_p50=ttft,
        avg_power_w=energy_j / window.duration_s / len(replay.gpus),
        output_tok_s=tokens / window.duration_s,
        avg_batch_size=batch / window.duration_s,
        itl_ms_p99=itl99,
        tpot_ms_mean=tpot,
        e2el_ms_p50=e2el,
    )


def _err(sim: float, real: float) -> float:
    return sim / real - 1


PointKey = tuple[int, int, int, int, float, int, int]


def _key(point: RealPoint) -> PointKey:
    """What makes two measurements the same point: server settings, workload and prompts.

    A BPE run's prompts share no prefix whatever their seed, so runs that differ only in it
    are the same point to the server and to the replay: their seed is left out.
    """
    return (
        point.max_num_seqs,
        point.concurrency,
        point.input_len,
        point.output_len,
        point.range_ratio,
        point.seed if point.word_prompts else -1,
        point.api_server_count,
    )


Errors = tuple[float, float, float]


def gate(rows: list[Row]) -> dict[PointKey, Errors]:
    """(J/token, ITL p50, TTFT p50) errors per point, repeated measurements averaged."""
    groups: dict[PointKey, list[Row]] = defaultdict(list)
    for row in rows:
        groups[_key(row[0])].append(row)
    errors = {}
    for key, runs in groups.items():
        clean = [(p, f) for p, f in runs if not p.stalled_client]
        errors[key] = (
            _mean_err(runs, lambda f: f.j_per_output_token),
            _mean_err(clean, lambda f: f.itl_ms_p50) if clean else math.nan,
            _mean_err(runs, lambda f: f.ttft_ms_p50),
        )
    return errors


def _mean_err(runs: list[Row], figure: Callable[[Figures], float]) -> float:
    real = statistics.mean(figure(p.figures) for p, _ in runs)
    return _err(statistics.mean(figure(f) for _, f in runs), real)


def _missed(errors: Errors) -> list[str]:
    """The gated figures whose error is outside their bound (NaN: not gated)."""
    return [
        name for name, e, bound in zip(_GATED, errors, _TOLERANCES, strict=True) if abs(e) > bound
    ]


def print_table(rows: list[Row], errors: dict[PointKey, Errors]) -> None:
    """Print the comparison as a Markdown table, one row per measurement."""
    print(
        "| point | J/out-tok real | sim | err | ITL p50 ms real | sim | err "
        "| TTFT p50 ms real | sim | err | power W real | sim | err "
        "| tok/s real | sim | batch real | sim |"
    )
    print("|" + "---|" * 17)
    for point, sim in rows:
        real = point.figures
        e_j = _err(sim.j_per_output_token, real.j_per_output_token)
        e_itl = _err(sim.itl_ms_p50, real.itl_ms_p50)
        missed = _missed(errors[_key(point)])
        print(
            f"| {point.name}{' (ITL: stalled client)' if point.stalled_client else ''}"
            f"{' **MISS ' + ', '.join(missed) + '**' if missed else ''} "
            f"| {real.j_per_output_token:.4f} | {sim.j_per_output_token:.4f} | {e_j:+.1%} "
            f"| {real.itl_ms_p50:.2f} | {sim.itl_ms_p50:.2f} | {e_itl:+.1%} "
            f"| {real.ttft_ms_p50:.0f} | {sim.ttft_ms_p50:.0f} "
            f"| {_err(sim.ttft_ms_p50, real.ttft_ms_p50):+.0%} "
            f"| {real.avg_power_w:.0f} | {sim.avg_power_w:.0f} "
            f"| {_err(sim.avg_power_w, real.avg_power_w):+.1%} "
            f"| {real.output_tok_s:.0f} | {sim.output_tok_s:.0f} "
            f"| {real.avg_batch_size:.1f} | {sim.avg_batch_size:.1f} |"
        )


def print_repeats(rows: list[Row], errors: dict[PointKey, Errors]) -> None:
    """Points measured more than once (same setting, workload and seed): gated on the mean."""
    counts = defaultdict(list)
    for point, _ in rows:
        counts[_key(point)].append(point)
    for key, points in counts.items():
        if len(points) > 1:
            names = ", ".join(p.name for p in points)
            itl = " / ".join(f"{p.figures.itl_ms_p50:.1f}" for p in points)
            ttft = " / ".join(f"{p.figures.ttft_ms_p50:.0f}" for p in points)
            e_j, e_itl, e_ttft = errors[key]
            itl_err = "not gated" if math.isnan(e_itl) else f"{e_itl:+.1%}"
            print(
                f"repeated point ({names}): real ITL p50 {itl} ms, TTFT p50 {ttft} ms; sim vs "
                f"the mean of the runs: J/output-token {e_j:+.1%}, ITL p50 {itl_err}, "
                f"TTFT p50 {e_ttft:+.0%}; {_ttft_band([p.figures.ttft_ms_p50 for p in points])}"
            )


def _ttft_band(runs_ms: list[float]) -> str:
    """The TTFT p50 predictions within the bound of every run, or why there are none."""
    bound = _TOLERANCES[_GATED.index("TTFT p50")]
    low, high = max(runs_ms) * (1 - bound), min(runs_ms) * (1 + bound)
    if low > high:
        return f"no one prediction is within {bound:.0%} of every run (the runs differ more)"
    return f"predictions within {bound:.0%} of every run: {low:.0f}-{high:.0f} ms"


def print_latency_table(rows: list[tuple[RealPoint, Figures]]) -> None:
    """Print the latencies that show scheduling (reported, not gated)."""
    print("| point | ITL p99 ms real | sim | TPOT mean ms real | sim | E2EL p50 ms real | sim |")
    print("|" + "---|" * 7)
    for point, sim in rows:
        real = point.figures
        print(
            f"| {point.name} | {real.itl_ms_p99:.1f} | {sim.itl_ms_p99:.1f} "
            f"| {real.tpot_ms_mean:.1f} | {sim.tpot_ms_mean:.1f} "
            f"| {real.e2el_ms_p50:.0f} | {sim.e2el_ms_p50:.0f} |"
        )


def simulator(profile_path: Path | None) -> tuple[GpuModel, PerfConstants]:
    """The built-in H100, or the GPU and constants of a calibrated profile."""
    if profile_path is None:
        return H100, DEFAULT_PERF
    try:
        profile = load_profile(profile_path)
        gpu = gpu_model(profile.gpu)
    except ValueError as err:
        raise InputError(f"--gpu-profile {profile_path}: {err}") from None
    return apply_profile(gpu, DEFAULT_PERF, profile.parameters)


def main(argv: list[str] | None = None) -> int:
    """Replay the committed points; 0 if all within bounds, 1 if any misses, 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        type=Path,
        nargs="+",
        default=[_RESULTS, _TOKENIZER_RESULTS, _HELDOUT_RESULTS, _API_SERVER_RESULTS],
        help="folders of bench JSONs",
    )
    parser.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="simulate servers without prefix caching (to see what the cache accounts for)",
    )
    parser.add_argument(
        "--gpu-profile",
        type=Path,
        help="replay with a `jouletune calibrate` profile's parameters instead of the built-in",
    )
    args = parser.parse_args(argv)
    try:
        started_s = time.perf_counter()
        gpu, perf = simulator(args.gpu_profile)
        points = [p for folder in args.results for p in load_points(folder)]
        rows = replay_all(points, prefix_caching=not args.no_prefix_caching, perf=perf, gpu=gpu)
        elapsed_s = time.perf_counter() - started_s
    except InputError as err:
        print(f"sim_fidelity: error: {err}", file=sys.stderr)
        return 2
    errors = gate(rows)
    print(
        f"# sim_fidelity: jouletune {__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {len(rows)} real measurements of {len(errors)} points from "
        f"{', '.join(map(str, args.results))}; "
        f"prefix caching {'off' if args.no_prefix_caching else 'on'}; "
        f"GPU {args.gpu_profile or 'built-in h100-80gb'}; "
        f"simulated in {elapsed_s:.1f} s\n"
    )
    misses = sum(bool(_missed(e)) for e in errors.values())
    print_table(rows, errors)
    print()
    print_repeats(rows, errors)
    print()
    print_latency_table(rows)
    bounds = ", ".join(f"{n} ±{b:.0%}" for n, b in zip(_GATED, _TOLERANCES, strict=True))
    print(f"\n{misses} of {len(errors)} point(s) outside the bounds ({bounds}; power reported)")
    for key, e in errors.items():
        if missed := _missed(e):
            name = next(p.name for p, _ in rows if _key(p) == key)
            print(f"  {name}: {', '.join(missed)}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
