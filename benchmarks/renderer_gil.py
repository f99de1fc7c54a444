"""How fast a renderer thread tokenizes while an event loop streams chunks, per loop kind.

    python benchmarks/renderer_gil.py [--chunk-us 40] [--render-python-us 100]
                                      [--streams 0 100 200 300 350]    (uvloop: pip install uvloop)

vLLM 0.24's API server runs on uvloop and tokenizes prompts in a one-thread executor (its
renderer, `renderer_num_workers` 1), which needs Python's GIL for its Python parts. At 512
streams on one H100 (`benchmarks/results/h100-api-server/api1`) vLLM took requests in at about
60 a second, first come first served (TTFT p10-p90 3.3-4.8 s), while it streamed every
running request's tokens at the engine's pace: something slowed the intake and not the loop.
This measures one candidate on this machine: an event loop that every 20 ms wakes one task per
stream to build and write a chunk (`--chunk-us` of Python each, 128 streams between yields, as
vLLM's output handler), while a one-thread executor renders 128-word prompts with HF
`tokenizers` (`encode_batch`, which releases the GIL, between `--render-python-us` of Python)
from a backlog of 32. One line per loop kind and stream count: the share of each 20 ms step
the loop spent on the streams (above 100%: the steps ran late) and the renders per second.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers

_STEP_S = 0.020
_RUN_S = 4.0
_BACKLOG = 32
_WORDS = [f"w{i}" for i in range(32000)]
_PROMPT = " ".join(_WORDS[i * 7 % len(_WORDS)] for i in range(128))
_CHUNK = {"id": "cmpl-x", "choices": [{"text": "w1", "index": 0}]}
# A reader in its own process, so that reading the chunks takes no GIL from this one.
_SINK = (
    "import socket;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();"
    "print(s.getsockname()[1],flush=True);c,_=s.accept()\nwhile c.recv(1<<20):pass"
)


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_WORDS)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def python_work(us: float) -> None:
    """Hold the GIL in Python code (JSON encoding, as a chunk's) for `us` microseconds."""
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        json.dumps(_CHUNK)


async def stream_steps(n: int, chunk_us: float, stop: asyncio.Event, busy: list[float]) -> None:
    """Every step, wake `n` stream tasks that each build and write one chunk."""
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    _, writer = await asyncio.open_connection("127.0.0.1", int(sink.stdout.readline()))
    payload = b"data: " + json.dumps(_CHUNK).encode() + b"\n\n"
    queues: list[asyncio.Queue[None]] = [asyncio.Queue() for _ in range(n)]
    written: asyncio.Queue[None] = asyncio.Queue()

    async def stream(queue: asyncio.Queue[None]) -> None:
        while True:
            await queue.get()
            python_work(chunk_us)
            writer.write(payload)
            written.put_nowait(None)

    tasks = [asyncio.create_task(stream(q)) for q in queues]
    due = time.perf_counter()
    while not stop.is_set():
        start = time.perf_counter()
        for i in range(0, n, 128):
            for queue in queues[i : i + 128]:
                queue.put_nowait(None)
            await asyncio.sleep(0)
        for _ in range(n):
            await written.get()
        busy.append(time.perf_counter() - start)
        due += _STEP_S
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    for task in tasks:
        task.cancel()
    writer.close()
    sink.kill()


async def renders_per_s(n: int, chunk_us: float, render_us: float) -> tuple[float, float]:
    """(renders per second, the loop's share of each step) with `n` streams."""
    tok = _tokenizer()

    def render() -> int:
        python_work(render_us / 2)
        ids = tok.encode_batch([_PROMPT])[0].ids
        python_work(render_us / 2)
        return len(ids)

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)
    stop, busy = asyncio.Event(), list[float]()
    streaming = asyncio.create_task(stream_steps(n, chunk_us, stop, busy))
    await asyncio.sleep(0.5)
    end = time.perf_counter() + _RUN_S
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await loop.run_in_executor(pool, render)
            done += 1

    await asyncio.gather(*(client() for _ in range(_BACKLOG)))
    stop.set()
    await streaming
    pool.shutdown()
    return done / _RUN_S, (sum(busy) / len(busy) / _STEP_S if busy else 0.0)


def _runners() -> dict[str, Callable[[Coroutine[Any, Any, tuple[float, float]]], Any]]:
    runners: dict[str, Callable[[Coroutine[Any, Any, tuple[float, float]]], Any]] = {
        "asyncio": asyncio.run
    }
    try:
        runners["uvloop"] = importlib.import_module("uvloop").run
    except ImportError:
        print("renderer_gil: uvloop is not installed; asyncio only", file=sys.stderr)
    return runners


def main(argv: list[str] | None = None) -> int:
    """Print one line per loop kind and stream count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-us", type=float, default=40.0)
    parser.add_argument("--render-python-us", type=float, default=100.0)
    parser.add_argument("--streams", type=int, nargs="+", default=[0, 100, 200, 300, 350])
    args = parser.parse_args(argv)
    print(
        f"# renderer_gil: Python {sys.version.split()[0]}, switch interval"
        f" {sys.getswitchinterval() * 1e3:g} ms, chunk {args.chunk_us:g} us, render"
        f" {args.render_python_us:g} us of Python, {_STEP_S * 1e3:g} ms steps"
    )
    for kind, run in _runners().items():
        for n in args.streams:
            rate, share = run(renders_per_s(n, args.chunk_us, args.render_python_us))
            print(
                f"{kind:8s} {n:4d} streams: loop {share:6.1%} of each step, {rate:6.0f} renders/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
