"""The simulator against the real H100: calibration table, live check, and streaming speed.

    python benchmarks/sim_calibration.py                # simulated time, all sweep points
    python benchmarks/sim_calibration.py --live         # a real sim-server process, real time
    python benchmarks/sim_calibration.py --speed        # 1,000 streams through one sim-server

Default mode runs the sim-server's engine model (`jouletune.sim.run_closed_loop`) in simulated
time under the calibration's closed loop (C clients, 512 prompt / 256 output tokens,
`ignore_eos`, 25 s window after every client had a token and one request finished) and prints
real vs simulated figures per concurrency. It exits 1 when J/output-token or ITL p50 is off by
more than 15% anywhere.

`--live` starts `jouletune sim-server` on loopback and drives it with a minimal closed-loop
streaming client (raw HTTP/1.1 over asyncio, one process), measuring the same figures on the
client's clock and energy from `/sim/truth` over the window. `--speed` runs 1,000 concurrent
streams with short prompts against one sim-server and reports streamed tokens/s and the
server's CPU use (its process is single-threaded: one core at most).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from jouletune import __version__
from jouletune.gpu.simulated import gpu_model
from jouletune.models import model_arch
from jouletune.sim import DEFAULT_PERF, EngineConfig, run_closed_loop

_CALIBRATION = (
    Path(__file__).resolve().parent
    / "results"
    / "h100-calibration"
    / "h100_vllm0.24_llama8b-dummy_512in-256out.jsonl"
)
_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_TOLERANCE = 0.15
# The calibration server's settings (../shared/calibration/README.md and its exposition's
# cache_config_info: gpu_memory_utilization 0.92, 8192-token chunked-prefill budget).
_CAL_SERVER = {
    "max_num_seqs": 256,
    "max_model_len": 2048,
    "max_num_batched_tokens": 8192,
    "gpu_memory_utilization": 0.92,
}


@dataclass(frozen=True, kw_only=True)
class Point:
    """Figures of one concurrency level (real or simulated)."""

    concurrency: int
    itl_ms_p50: float
    itl_ms_p99: float
    ttft_ms_p50: float
    power_w: float
    sm_clock_mhz: float
    output_tok_s: float
    j_per_output_token: float


def _engine_config() -> EngineConfig:
    return EngineConfig(
        arch=model_arch(_MODEL),
        gpu=gpu_model("h100-80gb"),
        tensor_parallel_size=1,
        perf=DEFAULT_PERF,
        **_CAL_SERVER,  # type: ignore[arg-type]
    )


def _real_points(path: Path) -> list[Point]:
    points = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        points.append(
            Point(
                concurrency=r["concurrency"],
                itl_ms_p50=r["itl_ms_p50"],
                itl_ms_p99=r["itl_ms_p99"],
                ttft_ms_p50=r["ttft_ms_p50"],
                power_w=r["power_w"],
                sm_clock_mhz=r["sm_clock_mhz_mean"],
                output_tok_s=r["output_tok_s"],
                j_per_output_token=r["j_per_output_token"],
            )
        )
    return points


def _simulated_point(concurrency: int, window_s: float) -> Point:
    r = run_closed_loop(
        _engine_config(), concurrency=concurrency, input_len=512, output_len=256, window_s=window_s
    )
    return Point(
        concurrency=concurrency,
        itl_ms_p50=r.itl_ms_p50,
        itl_ms_p99=r.itl_ms_p99,
        ttft_ms_p50=r.ttft_ms_p50,
        power_w=r.power_w,
        sm_clock_mhz=r.sm_clock_mhz_mean,
        output_tok_s=r.output_tok_s,
        j_per_output_token=r.j_per_output_token,
    )


def _table(real: list[Point], sim: list[Point], title: str) -> int:
    """Print real vs simulated; return how many points miss the 15% targets."""
    print(f"\n{title}\n")
    print(
        "| C | J/out-tok real | sim | err | ITL p50 ms real | sim | err | power W real | sim "
        "| tok/s real | sim | TTFT p50 ms real | sim | ITL p99 ms real | sim | SM MHz real | sim |"
    )
    print("|" + "---|" * 17)
    misses = 0
    for r, s in zip(real, sim, strict=True):
        e_j = s.j_per_output_token / r.j_per_output_token - 1
        e_itl = s.itl_ms_p50 / r.itl_ms_p50 - 1
        misses += abs(e_j) > _TOLERANCE or abs(e_itl) > _TOLERANCE
        print(
            f"| {r.concurrency} | {r.j_per_output_token:.4f} | {s.j_per_output_token:.4f} | "
            f"{e_j:+.1%} | {r.itl_ms_p50:.2f} | {s.itl_ms_p50:.2f} | {e_itl:+.1%} | "
            f"{r.power_w:.0f} | {s.power_w:.0f} | {r.output_tok_s:.0f} | {s.output_tok_s:.0f} | "
            f"{r.ttft_ms_p50:.0f} | {s.ttft_ms_p50:.0f} | {r.itl_ms_p99:.1f} | "
            f"{s.itl_ms_p99:.1f} | {r.sm_clock_mhz:.0f} | {s.sm_clock_mhz:.0f} |"
        )
    print(f"\n{misses} point(s) outside ±{_TOLERANCE:.0%} on J/output-token or ITL p50")
    return misses


def _header(mode: str, setup: str) -> None:
    print(
        f"# sim_calibration ({mode}): jouletune {__version__}, Python {platform.python_version()},"
        f" {platform.machine()} {os.cpu_count()} CPUs; model {_MODEL} on simulated h100-80gb;"
        f" {setup}"
    )


_CAL_SETUP = f"server {_CAL_SERVER}; workload closed loop, 512 in / 256 out, ignore_eos"


# --- live mode: a real sim-server process -------------------------------------------------


class _Server:
    """A `jouletune sim-server` child process on a free loopback port."""

    def __init__(self, args: list[str]) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in stop()
        cmd = [sys.executable, "-m", "jouletune", "sim-server", *args]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"sim-server exited: {self._log.read().decode()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("sim-server did not start within 30 s")

    def get(self, path: str) -> dict[str, object]:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            result: dict[str, object] = json.loads(resp.read())
            return result

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@dataclass
class _ClientStats:
    token_times_s: list[list[float]]
    starts_s: list[float]
    tokens: int = 0
    finished: int = 0


async def _stream_once(port: int, body: bytes, stats: _ClientStats) -> None:
    """One streaming completion over raw HTTP/1.1; records each token chunk's arrival."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.time()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body)
    times: list[float] = []
    stats.token_times_s.append(times)
    stats.starts_s.append(start)
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.time()
        buf += data
        # one token chunk per '"text":"' occurrence (the usage chunk has no text)
        n = buf.count(b'"text":"')
        times.extend([now] * n)
        stats.tokens += n
        keep = buf.rfind(b'"text":"')
        buf = buf[keep + 8 :] if keep >= 0 else buf[-16:]
        if b"[DONE]" in data:
            break
    writer.close()
    stats.finished += 1


async def _closed_loop(
    port: int, concurrency: int, prompt_len: int, output_len: int, duration_s: float
) -> _ClientStats:
    stats = _ClientStats(token_times_s=[], starts_s=[])
    stop_at = time.time() + duration_s
    sent = itertools.count()

    async def client() -> None:
        while time.time() < stop_at:
            await _stream_once(port, _body(next(sent), prompt_len, output_len), stats)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return stats


def _body(n: int, prompt_len: int, output_len: int) -> bytes:
    """The n-th request: a prompt of its own (two leading words from `n`), as the real sweep's
    random prompts were; one shared prompt would be served from the prefix cache."""
    words = [f"t{3 + n % 1000}", f"t{3 + n // 1000 % 1000}"]
    words += [f"t{3 + i % 1000}" for i in range(prompt_len - 2)]
    request = {
        "model": _MODEL,
        "prompt": " ".join(words),
        "max_tokens": output_len,
        "ignore_eos": True,
        "stream": True,
    }
    return json.dumps(request).encode()


def _live_point(concurrency: int, warmup_s: float, window_s: float) -> Point:
    args = [_MODEL, "--load-format", "dummy", "--max-num-seqs", "256", "--max-model-len", "2048"]
    args += ["--max-num-batched-tokens", "8192", "--gpu-memory-utilization", "0.92"]
    server = _Server(args)
    try:
        t0 = time.time()
        stats = asyncio.run(_closed_loop(server.port, concurrency, 512, 256, warmup_s + window_s))
        start_s, end_s = t0 + warmup_s, t0 + warmup_s + window_s
        truth = server.get(f"/sim/truth?start_unix_s={start_s}&end_unix_s={end_s}")
    finally:
        server.stop()
    itls, ttfts, tokens = [], [], 0
    for start, times in zip(stats.starts_s, stats.token_times_s, strict=True):
        tokens += sum(1 for t in times if start_s < t <= end_s)
        itls += [b - a for a, b in itertools.pairwise(times) if start_s < b <= end_s]
        if times and start_s < times[0] <= end_s:
            ttfts.append(times[0] - start)
    energy_j = float(truth["energy_j"])  # type: ignore[arg-type]
    q = statistics.quantiles
    return Point(
        concurrency=concurrency,
        itl_ms_p50=statistics.median(itls) * 1e3,
        itl_ms_p99=q(itls, n=100)[98] * 1e3,
        ttft_ms_p50=statistics.median(ttfts) * 1e3 if ttfts else float("nan"),
        power_w=energy_j / window_s,
        sm_clock_mhz=float("nan"),
        output_tok_s=tokens / window_s,
        j_per_output_token=energy_j / tokens,
    )


def _speed(streams: int, duration_s: float, output_len: int) -> None:
    args = [_MODEL, "--max-num-seqs", str(streams), "--max-model-len", "2048"]
    server = _Server(args)
    try:
        cpu0, t0 = server.cpu_s(), time.time()
        stats = asyncio.run(_closed_loop(server.port, streams, 16, output_len, duration_s))
        cpu1, t1 = server.cpu_s(), time.time()
        truth = server.get(f"/sim/truth?start_unix_s={t0 + 2}&end_unix_s={t1 - 0.5}")
    finally:
        server.stop()
    elapsed = t1 - t0
    model_tok_s = int(truth["output_tokens"]) / (t1 - 0.5 - t0 - 2)  # type: ignore[call-overload]
    print(
        f"\n--speed: {streams} concurrent streams, 16 in / {output_len} out, {elapsed:.1f} s\n"
        f"  requests streamed to the end: {stats.finished}\n"
        f"  tokens received by the client: {stats.tokens} ({stats.tokens / elapsed:,.0f}/s)\n"
        f"  tokens the model emitted (truth, steady part): {model_tok_s:,.0f}/s\n"
        f"  sim-server CPU: {(cpu1 - cpu0) / elapsed:.2f} of one core"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen mode; return 1 when the calibration misses its targets."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calibration", type=Path, default=_CALIBRATION)
    p.add_argument("--window-s", type=float, default=25.0)
    p.add_argument("--live", action="store_true", help="drive a real sim-server process")
    p.add_argument("--live-concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--warmup-s", type=float, default=8.0)
    p.add_argument("--speed", action="store_true", help="1,000-stream throughput check")
    p.add_argument("--streams", type=int, default=1000)
    args = p.parse_args(argv)
    if args.speed:
        _header("speed", f"server --max-num-seqs {args.streams}; closed loop, 16 in / 256 out")
        _speed(args.streams, args.window_s, output_len=256)
        return 0
    real = _real_points(args.calibration)
    if args.live:
        _header("live sim-server process, real time", _CAL_SETUP)
        chosen = [r for r in real if r.concurrency in args.live_concurrency]
        sim = [_live_point(r.concurrency, args.warmup_s, args.window_s) for r in chosen]
        return 1 if _table(chosen, sim, "Real H100 vs live sim-server") else 0
    _header("engine model in simulated time", _CAL_SETUP)
    sim = [_simulated_point(r.concurrency, args.window_s) for r in real]
    return 1 if _table(real, sim, "Real H100 vs simulator (simulated time)") else 0


if __name__ == "__main__":
    sys.exit(main())
