"""How many concurrent streams `jouletune bench` times correctly on one CPU core.

    .venv/bin/python benchmarks/loadgen_throughput.py [--levels 64,256,512,1024,1536,2048]
        [--input-len 32] [--output-len 128] [--rounds 3] [--json PATH]

The script pins itself (the load generator) to one core with `os.sched_setaffinity` and starts
a `jouletune sim-server` pinned to another. For each stream count C it runs `run_bench`
in-process, closed loop (C streams, rounds x C requests), then asks the simulator for its
ground truth over the result's steady-state window and compares:

- ITL: the load generator's mean inter-token latency vs the simulator's, pooled over the
  same requests: sum(last token - first token) / sum(output tokens - 1);
- TPOT: mean per-request TPOT vs the simulator's;
- streamed tokens/s: output tokens whose chunks arrived in the window / window length.

It reports the highest C whose ITL is within 2% of the truth (goal: >= 1,000 streams and
>= 20,000 tokens/s). The sim-server runs with `--api-server-count 4`: one simulated vLLM API
server writes at most 1/api_chunk_s (about 21,000) chunks per second, which would cap the
stream before the client does; the point here is the client. CPU use of both processes during
each run says which side was the bottleneck: a sim-server at ~100% of its core cannot keep its
own schedule, and its truth then describes tokens it emitted late (its log counts "behind the
wall clock" events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jouletune import __version__
from jouletune.loadgen import BenchConfig, BenchResult, run_bench

# The repository root, for the tests' process helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import free_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ITL_TOLERANCE = 0.02
GOAL_STREAMS = 1000
GOAL_TOKENS_PER_S = 20_000.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LAG_PROBE_S = 0.01
# Other processes on a shared machine take CPU from both pinned processes: say how busy it was.
_LOADAVG_BEFORE: list[str] = []


@dataclass(frozen=True)
class Level:
    """One stream count's figures."""

    streams: int
    requests: int
    window_s: float | None
    itl_ms: float | None
    truth_itl_ms: float | None
    itl_error: float | None
    tpot_ms: float | None
    truth_tpot_ms: float | None
    tokens_per_s: float | None
    client_cpu: float
    loop_lag_p99_ms: float
    sim_cpu: float
    sim_lag_events: int
    valid: bool
    note: str


def _cores() -> tuple[int, int]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("loadgen_throughput: needs two CPU cores (one each for bench and sim)")
    return cores[0], cores[1]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _start_sim(port: int, core: int, max_num_seqs: int, log_path: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "jouletune", "sim-server", MODEL, "--host", "127.0.0.1"]
    args += ["--port", str(port), "--max-num-seqs", str(max_num_seqs)]
    args += ["--api-server-count", "4"]  # the modelled API server must not be the ceiling
    with log_path.open("wb") as log:
        sim = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sim.poll() is not None:
            raise SystemExit(f"sim-server exited {sim.returncode}: {log_path.read_text()}")
        try:
            _get_json(f"http://127.0.0.1:{port}/v1/models")
            return sim
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    sim.kill()
    raise SystemExit("sim-server did not come up within 60 s")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _truth_itl_tpot(truth: dict[str, Any]) -> tuple[float | None, float | None]:
    reqs = [r for r in truth["requests"] if r["output_tokens"] > 1]
    if not reqs:
        return None, None
    spans = [r["last_token_unix_s"] - r["first_token_unix_s"] for r in reqs]
    gaps = [r["output_tokens"] - 1 for r in reqs]
    itl_ms = 1000 * sum(spans) / sum(gaps)
    tpot_ms = 1000 * sum(s / g for s, g in zip(spans, gaps, strict=True)) / len(reqs)
    return itl_ms, tpot_ms


async def _bench_with_lag_monitor(config: BenchConfig) -> tuple[BenchResult, float]:
    """Run the bench while a task measures how late the event loop wakes it (p99, ms): a
    starved or saturated load generator reads chunks late and in clumps."""
    lags_ms: list[float] = []

    async def monitor() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(_LAG_PROBE_S)
            lags_ms.append((time.perf_counter() - t0 - _LAG_PROBE_S) * 1000)

    task = asyncio.create_task(monitor())
    try:
        result = await run_bench(config)
    finally:
        task.cancel()
    lags_ms.sort()
    return result, lags_ms[int(0.99 * (len(lags_ms) - 1))] if lags_ms else 0.0


def _measure(streams: int, args: argparse.Namespace, sim_url: str, sim: subprocess.Popen[bytes],
             log_path: Path) -> Level:  # fmt: skip
    config = BenchConfig(
        base_url=sim_url,
        num_prompts=streams * args.rounds,
        max_concurrency=streams,
        random_input_len=args.input_len,
        random_output_len=args.output_len,
        seed=streams,
    )
    lag_before = log_path.read_text(errors="replace").count("behind the wall clock")
    wall0, cpu0, sim0 = time.perf_counter(), time.process_time(), _cpu_s(sim.pid)
    result, loop_lag_ms = asyncio.run(_bench_with_lag_monitor(config))
    wall = time.perf_counter() - wall0
    client_cpu = (time.process_time() - cpu0) / wall
    sim_cpu = (_cpu_s(sim.pid) - sim0) / wall
    lags = log_path.read_text(errors="replace").count("behind the wall clock") - lag_before
    w = result.window
    truth_itl = truth_tpot = None
    if w is not None:
        truth = _get_json(
            f"{sim_url}/sim/truth?start_unix_s={w.start_unix_s}&end_unix_s={w.end_unix_s}"
        )
        truth_itl, truth_tpot = _truth_itl_tpot(truth)
    itl = result.itl_ms.mean
    error = itl / truth_itl - 1 if itl is not None and truth_itl else None
    return Level(
        streams=streams,
        requests=result.completed,
        window_s=w.duration_s if w else None,
        itl_ms=itl,
        truth_itl_ms=truth_itl,
        itl_error=error,
        tpot_ms=result.tpot_ms.mean,
        truth_tpot_ms=truth_tpot,
        tokens_per_s=result.output_token_throughput,
        client_cpu=client_cpu,
        loop_lag_p99_ms=loop_lag_ms,
        sim_cpu=sim_cpu,
        sim_lag_events=lags,
        valid=result.valid,
        note=result.invalid_reason or "",
    )


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _table(levels: list[Level]) -> Table:
    table = Table(title="jouletune bench on one core vs sim-server truth")
    for col in (
        "streams",
        "window s",
        "ITL ms",
        "truth ITL ms",
        "ITL err",
        "TPOT ms",
        "truth TPOT ms",
        "tokens/s",
        "bench CPU",
        "bench loop lag p99 ms",
        "sim CPU",
        "sim lag events",
    ):
        table.add_column(col, justify="right")  # fmt: skip
    for lv in levels:
        table.add_row(
            str(lv.streams), _fmt(lv.window_s, ".1f"), _fmt(lv.itl_ms, ".2f"),
            _fmt(lv.truth_itl_ms, ".2f"), _fmt(lv.itl_error, "+.2%"), _fmt(lv.tpot_ms, ".2f"),
            _fmt(lv.truth_tpot_ms, ".2f"), _fmt(lv.tokens_per_s, ",.0f"),
            f"{lv.client_cpu:.0%}", f"{lv.loop_lag_p99_ms:.1f}", f"{lv.sim_cpu:.0%}",
            str(lv.sim_lag_events),
        )  # fmt: skip
    return table


def _within(level: Level) -> bool:
    return level.itl_error is not None and abs(level.itl_error) <= ITL_TOLERANCE


def _verdict(console: Console, levels: list[Level]) -> None:
    """The highest stream count up to which every level kept ITL within 2% of the truth."""
    best: Level | None = None
    for level in levels:  # ascending stream counts
        if not _within(level):
            break
        best = level
    outside = [f"{lv.streams} ({_fmt(lv.itl_error, '+.2%')})" for lv in levels if not _within(lv)]
    if outside:
        console.print(f"levels with ITL outside 2% of truth: {', '.join(outside)}")
    if best is None:
        console.print("no stream count kept ITL within 2% of the truth")
        return
    goal = best.streams >= GOAL_STREAMS and (best.tokens_per_s or 0) >= GOAL_TOKENS_PER_S
    console.print(
        f"highest stream count with ITL within 2% of truth at it and every lower level: "
        f"{best.streams} ({_fmt(best.tokens_per_s, ',.0f')} tokens/s); goal >= {GOAL_STREAMS} "
        f"streams and >= {GOAL_TOKENS_PER_S:,.0f} tokens/s: {'met' if goal else 'NOT met'}"
    )


def _environment(args: argparse.Namespace, bench_core: int, sim_core: int) -> dict[str, str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpu": cpu,
        "cores": f"bench on core {bench_core}, sim-server on core {sim_core}",
        "workload": f"random {args.input_len} in / {args.output_len} out, closed loop, "
        f"{args.rounds} x streams requests, sim {MODEL} on a simulated H100",
        "python": platform.python_version(),
        "jouletune": __version__,
        "aiohttp": version("aiohttp"),
        "kernel": platform.release(),
        "load average before the run (1/5/15 min)": " ".join(_LOADAVG_BEFORE),
        "load average after the run": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main() -> int:
    """Run every level and print the table; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="64,256,512,1024,1536,2048")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="requests per stream")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    levels = sorted(int(x) for x in args.levels.split(","))
    _LOADAVG_BEFORE[:] = [f"{x:.2f}" for x in os.getloadavg()]
    bench_core, sim_core = _cores()
    os.sched_setaffinity(0, {bench_core})
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="loadgen-bench-")) / "sim.log"
    sim = _start_sim(port, sim_core, max(levels), log_path)
    try:
        results = [_measure(c, args, f"http://127.0.0.1:{port}", sim, log_path) for c in levels]
    finally:
        sim.terminate()
        sim.wait(10)
    env = _environment(args, bench_core, sim_core)
    console = Console(width=200)
    console.print(_table(results))
    for key, value in env.items():
        console.print(f"{key}: {value}")
    _verdict(console, results)
    if args.json:
        args.json.write_text(
            json.dumps({"levels": [asdict(lv) for lv in results], "environment": env}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
