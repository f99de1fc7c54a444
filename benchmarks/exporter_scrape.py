"""Time `/metrics` scrapes of 8 GPUs: the collector's own cost, and a real end-to-end scrape.

    .venv/bin/python benchmarks/exporter_scrape.py [--gpus 8] [--scrapes 2000] [--json PATH]

(a) collector overhead: 8 `NvmlGpu`s over a stand-in pynvml whose functions return constants
    at once, rendered by prometheus_client's `generate_latest`. The figure is jouletune's own
    Python cost per scrape (reading samples, building families, encoding text), NOT NVML's:
    faking NVML with made-up call costs would be no measurement. The real NVML read cost is
    measured on an H100 by `benchmarks/h100_validate.py`.
(b) end to end: a real `jouletune exporter --sim URL` process in front of a real
    `jouletune sim-server` with 8 GPUs, scraped over HTTP on loopback (one new TCP connection
    per scrape, as Prometheus' HTTP/1.0 requests to this server get). Pass `--sim-url` to use
    a sim-server that is already running instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

from prometheus_client import CollectorRegistry, generate_latest

from jouletune.exporter import GpuCollector
from jouletune.gpu import open_nvml_gpus, sample_all

# The repository root, for the tests' process helpers (start, wait until healthy, stop).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import free_port, jouletune_process

# A sim-server with 8 GPUs: a 70B model at TP 8 (its CLI mirrors `vllm serve`).
_SIM_ARGS_8_GPUS = "meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 8"


@dataclass(frozen=True)
class Timing:
    """Per-scrape wall time of one configuration, milliseconds."""

    what: str
    gpus: int
    scrapes: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    bytes_per_scrape: int


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print them, optionally write JSON."""
    args = _parser().parse_args(argv)
    timings = [_collector_overhead(args.gpus, args.scrapes)]
    try:
        timings.append(_end_to_end(args.gpus, args.scrapes // 4, args.sim_url, args.sim_args))
    except RuntimeError as err:
        print(f"end-to-end scrape skipped: {err}", file=sys.stderr)
    env = _environment()
    print(f"# {json.dumps(env)}")
    for t in timings:
        print(
            f"{t.what:<42} gpus={t.gpus} scrapes={t.scrapes:<5} p50={t.p50_ms:.3f} ms "
            f"p99={t.p99_ms:.3f} ms mean={t.mean_ms:.3f} ms max={t.max_ms:.3f} ms "
            f"({t.bytes_per_scrape} B)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "timings": [asdict(t) for t in timings]}, f, indent=2)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--sim-url", help="an already running sim-server (else one is started)")
    parser.add_argument(
        "--sim-args", default=_SIM_ARGS_8_GPUS, help="flags for the sim-server this starts"
    )
    parser.add_argument("--json", help="also write the figures here")
    return parser


def _collector_overhead(num_gpus: int, scrapes: int) -> Timing:
    with mock.patch("jouletune.gpu._nvml.pynvml", _instant_nvml(num_gpus)):
        gpus = open_nvml_gpus()
        registry = CollectorRegistry()
        registry.register(GpuCollector(read=lambda: sample_all(gpus), pod="p", namespace="ns"))
        return _time("collector + encode, pynvml stand-in", num_gpus, scrapes,
                     lambda: generate_latest(registry))  # fmt: skip


def _instant_nvml(num_gpus: int) -> Any:
    """A pynvml stand-in that answers every call with a constant, at once."""
    memory = SimpleNamespace(total=80 << 30, used=3 << 30)
    util = SimpleNamespace(gpu=87, memory=40)
    return SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: num_gpus,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h:08d}-0000-0000-0000-000000000000",
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda h: memory,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 123_456_789,
        nvmlDeviceGetPowerUsage=lambda h: 350_500,
        nvmlDeviceGetPowerManagementLimit=lambda h: 700_000,
        nvmlDeviceGetClockInfo=lambda h, clock: 1980,
        nvmlDeviceGetUtilizationRates=lambda h: util,
        nvmlDeviceGetTemperature=lambda h, sensor: 45,
    )


def _end_to_end(num_gpus: int, scrapes: int, sim_url: str | None, sim_args: str) -> Timing:
    with _sim_server(sim_url, sim_args) as url:
        with urllib.request.urlopen(url + "/sim/gpus", timeout=5) as resp:
            found = len(json.load(resp)["gpus"])
        if found != num_gpus:
            raise RuntimeError(f"sim-server at {url} has {found} GPUs, not {num_gpus}")
        port = free_port()
        args = ["exporter", "--host", "127.0.0.1", "--port", str(port), "--sim", url]
        with jouletune_process(args, port=port, health_path="/healthz", timeout_s=60.0) as exp:
            metrics_url = exp.url + "/metrics"

            def scrape() -> bytes:
                with urllib.request.urlopen(metrics_url, timeout=5) as resp:
                    return bytes(resp.read())

            return _time(f"HTTP /metrics, exporter --sim ({found} GPUs)", found, scrapes, scrape)


def _time(what: str, gpus: int, scrapes: int, scrape: Callable[[], bytes]) -> Timing:
    size = len(scrape())
    for _ in range(min(50, scrapes)):  # warm-up: imports, caches, first connections
        scrape()
    elapsed_ms = []
    for _ in range(scrapes):
        start = time.perf_counter()
        scrape()
        elapsed_ms.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(elapsed_ms, n=100, method="inclusive")
    return Timing(
        what=what, gpus=gpus, scrapes=scrapes, p50_ms=cuts[49], p99_ms=cuts[98],
        mean_ms=statistics.fmean(elapsed_ms), max_ms=max(elapsed_ms), bytes_per_scrape=size,
    )  # fmt: skip


@contextmanager
def _sim_server(sim_url: str | None, sim_args: str) -> Iterator[str]:
    if sim_url is not None:
        yield sim_url.rstrip("/")
        return
    port = free_port()
    args = ["sim-server", "--host", "127.0.0.1", "--port", str(port), *shlex.split(sim_args)]
    with jouletune_process(args, port=port, health_path="/sim/gpus", timeout_s=60.0) as sim:
        yield sim.url


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "prometheus_client": version("prometheus-client"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
