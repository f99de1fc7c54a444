"""What a bench result warns of reaches the result and the printed summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from jouletune.loadgen import BenchResult, RequestRecord
from jouletune.loadgen._assembly import MeasuredRun, Telemetry, build_result
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._server import ServerInfo
from jouletune.loadgen._summary import print_summary

# 256/512 at 128 streams on an H200 whose API server fell behind: ITL mean 13.61 ms, TPOT 8.86.
H200_RUN = (
    Path(__file__).resolve().parents[2]
    / "benchmarks/results/h200-calibrate-heldout/held/c128_w256-512.json"
)


def _closed_loop(streams: int, per_stream: int, tokens: int, chunks: int) -> list[RequestRecord]:
    """`streams` clients, each sending its next request as the last ends; every request's
    `tokens` come in `chunks` chunks 20 ms apart, the first 50 ms after its send."""
    records: list[RequestRecord] = []
    for stream in range(streams):
        send_s = 0.01 * stream
        for _ in range(per_stream):
            times = [send_s + 0.05 + 0.02 * k for k in range(chunks)]
            records.append(
                RequestRecord(
                    index=len(records),
                    request_id=f"r{len(records)}",
                    success=True,
                    error=None,
                    send_s=send_s,
                    end_s=times[-1],
                    chunk_times_s=times,
                    output_tokens=tokens,
                    prompt_tokens=8,
                    expected_output_len=tokens,
                )
            )
            send_s = times[-1]
    return records


def _result(tokens: int, chunks: int) -> BenchResult:
    records = _closed_loop(streams=4, per_stream=12, tokens=tokens, chunks=chunks)
    run = MeasuredRun(
        records=records,
        t0_s=0.0,
        unix_offset_s=0.0,
        lost=None,
        requested_prompt_tokens={r.index: 8 for r in records},
        tokenizer="words",
    )
    config = BenchConfig(base_url="http://127.0.0.1:1", max_concurrency=4, num_prompts=48)
    server = ServerInfo(model="m", model_root=None, version=None, has_gauges=False)
    return build_result(config, server, run, Telemetry(energy=[], server=[], driver_version=None),
                        None, ["an earlier warning"])  # fmt: skip


def test_merged_tokens_are_warned_of_in_the_result_and_after_the_tables() -> None:
    # 20 tokens in 10 chunks 20 ms apart: ITL 20 ms, TPOT 180 / 19 = 9.47 ms.
    result = _result(tokens=20, chunks=10)
    assert result.window is not None and result.tokens_per_chunk == 2.0
    merged, earlier = result.warnings  # first: the operator's wire keeps the first two
    assert earlier == "an earlier warning"
    assert "2.00 tokens per chunk" in merged and "ITL 20.0 ms mean against TPOT 9.5 ms" in merged
    console = Console(record=True, width=400)
    print_summary(result, console)
    text = console.export_text()
    assert text.index("E2EL") < text.index(f"warning: {merged[:40]}") < text.index("warning: an")


def test_one_token_a_chunk_warns_of_nothing() -> None:
    result = _result(tokens=10, chunks=10)
    assert result.tokens_per_chunk == 1.0 and result.warnings == ["an earlier warning"]


def test_a_real_result_prints_its_figures() -> None:
    result = BenchResult.model_validate_json(H200_RUN.read_text())
    console = Console(record=True, width=200)
    print_summary(result, console)
    text = console.export_text()
    assert "13.61" in text and "8.86" in text  # ITL and TPOT means, as measured
