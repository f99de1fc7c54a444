"""Validate the exporter's energy counter against NVML's power readings on a real GPU.

    PYTHONPATH=src python3 benchmarks/h100_validate.py [--out h100.json] [--gpu 0]

READ-ONLY: this script never changes a GPU setting (power limit, clocks, persistence, MIG).
It only reads NVML and runs ordinary CUDA work through torch in a child process.

(a) energy agreement: the real `jouletune exporter` process is scraped over HTTP at the edges
    of a 30 s window of steady bf16-matmul load; its `jouletune_gpu_energy_joules_total`
    difference is compared with `nvmlDeviceGetPowerUsage` sampled every 20 ms and integrated
    (trapezoid) over the same window. Agreement must be within 5%. The same comparison is
    repeated under a bursty load (1 s on, 1 s off), where power swings (informational:
    averaged power readings lag there, which is why jouletune uses the counter).
(b) power profile: idle (no load), memory-bound (large device-to-device copies) and
    compute-bound (bf16 8192^3 matmuls), ~15 s each: energy-counter power, sampled power,
    SM clock, utilisation, temperature and the load's achieved throughput.
(c) read cost: `NvmlGpu.sample()`, each NVML call it makes, and an HTTP `/metrics` scrape of
    the exporter, on this GPU.

The reference readings call pynvml directly (not jouletune.gpu), so they do not share code
with what they check. Writes one JSON (GPU, driver, CUDA, torch versions and every figure);
exit status 1 when an agreement check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import pynvml
from prometheus_client.parser import text_string_to_metric_families

_SRC = Path(__file__).resolve().parents[1] / "src"
_SAMPLE_PERIOD_S = 0.020  # the brief's 20 ms reference sampling
_AGREEMENT_LIMIT = 0.05

# The load runs in its own process so that its Python loop never delays the 20 ms sampler.
_LOAD_SCRIPT = r"""
import json, sys, time, torch
mode, seconds = sys.argv[1], float(sys.argv[2])
dev = torch.device("cuda:0")
if mode in ("compute", "bursty"):
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    work = lambda: torch.mm(a, b)
    unit, per_op = "tflops", 2 * n**3 / 1e12
else:
    nbytes = 4 << 30
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    work = lambda: dst.copy_(src)
    unit, per_op = "tb_per_s_read_plus_write", 2 * nbytes / 1e12
for _ in range(20):
    work()
torch.cuda.synchronize()
print("ready", flush=True)
start = time.perf_counter()
busy_s, ops = 0.0, 0
while (now := time.perf_counter()) - start < seconds:
    if mode == "bursty" and int(now - start) % 2 == 1:
        time.sleep(0.01)  # the off second: GPU idle
        continue
    t0 = time.perf_counter()
    for _ in range(10):
        work()
    torch.cuda.synchronize()
    busy_s += time.perf_counter() - t0
    ops += 10
print(json.dumps({"mode": mode, unit: ops * per_op / busy_s, "busy_s": busy_s, "ops": ops,
                  "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "device_name": torch.cuda.get_device_name(0)}), flush=True)
"""


@dataclass(frozen=True)
class Plan:
    """How long each part runs, seconds."""

    ramp_s: float = 3.0  # load runs this long before a window opens: H100 power is a ~1 s mean
    tail_s: float = 2.0  # ... and this long after it closes
    agreement_window_s: float = 30.0
    profile_window_s: float = 15.0

    def scaled(self, factor: float) -> Plan:
        """Every duration times `factor` (a smoke run uses a small one)."""
        return Plan(**{k: v * factor for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class Reading:
    """One reference sample: perf_counter seconds, NVML's raw units converted to SI."""

    t_s: float
    power_w: float
    power_instant_w: float | None
    energy_j: float
    sm_clock_hz: float  # NaN where this GPU or VM does not report it
    utilization_ratio: float
    temperature_c: float


def _optional(read: Callable[[], float]) -> float:
    """A secondary reading, NaN when NVML refuses it (power and energy are never optional)."""
    try:
        return float(read())
    except pynvml.NVMLError:
        return math.nan


class Sampler:
    """Reads NVML directly every 20 ms in a thread and keeps every reading."""

    def __init__(self, handle: Any) -> None:
        self._h = handle
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._instant_ok = self._instant_w() is not None
        self.error: str | None = None

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"sampler stopped: {self.error}")

    def _instant_w(self) -> float | None:
        try:
            field = pynvml.nvmlDeviceGetFieldValues(self._h, [pynvml.NVML_FI_DEV_POWER_INSTANT])
        except pynvml.NVMLError:
            return None
        return None if field[0].nvmlReturn != 0 else field[0].value.uiVal / 1000.0

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"

    def _loop(self) -> None:
        h = self._h
        next_t = time.perf_counter()
        while not self._stop.is_set():
            power_mw = pynvml.nvmlDeviceGetPowerUsage(h)
            t = time.perf_counter()  # right after the power read, which is what we integrate
            self.readings.append(
                Reading(
                    t_s=t,
                    power_w=power_mw / 1000.0,
                    power_instant_w=self._instant_w() if self._instant_ok else None,
                    energy_j=pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0,
                    sm_clock_hz=_optional(
                        lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) * 1e6
                    ),
                    utilization_ratio=_optional(
                        lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
                    ),
                    temperature_c=_optional(
                        lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
                    ),
                )
            )
            next_t += _SAMPLE_PERIOD_S
            self._stop.wait(max(0.0, next_t - time.perf_counter()))


def main(argv: list[str] | None = None) -> int:
    """Run every check, write the JSON, return 1 if an agreement check failed."""
    args = _parser().parse_args(argv)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
    result: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    result["environment"] = _environment(handle)
    out = Path(args.out)
    checks: list[bool] = []
    plan = Plan().scaled(args.scale)
    result["plan"] = plan.__dict__
    with contextlib.ExitStack() as stack:
        try:
            exporter_url: str | None = stack.enter_context(_exporter(args.gpu))
        except RuntimeError as err:  # measure what can be measured without it
            exporter_url = None
            result["exporter_error"] = str(err)
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("idle", lambda: _profile(handle, None, plan)),
            ("memory_bound", lambda: _profile(handle, "memory", plan)),
            ("compute_bound", lambda: _profile(handle, "compute", plan)),
            (
                "agreement_steady",
                lambda: _agreement(handle, exporter_url, args.gpu, "compute", plan, checked=True),
            ),
            (
                "agreement_bursty",
                lambda: _agreement(handle, exporter_url, args.gpu, "bursty", plan, checked=False),
            ),
            ("read_cost", lambda: _read_cost(handle, exporter_url, args.gpu)),
        ]
        for name, step in steps:
            print(f"== {name}", flush=True)
            try:
                result[name] = step()
            except Exception as err:  # keep the other steps' figures
                result[name] = {"error": f"{type(err).__name__}: {err}"}
            print(json.dumps(result[name], indent=1)[:1500], flush=True)
            if "within_limit" in result[name]:
                checks.append(result[name]["within_limit"])
            out.write_text(json.dumps(result, indent=1))
    ok = bool(checks) and all(checks)
    result["all_agreement_checks_passed"] = ok
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}; agreement checks {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    default_out = Path(os.environ.get("OUT", ".")) / "h100_validation.json"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default=str(default_out), help=f"default {default_out}")
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU (default 0)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every duration (smoke runs: 0.1)"
    )
    return parser


def _profile(handle: Any, mode: str | None, plan: Plan) -> dict[str, Any]:
    """Power, clock and utilisation over a window of steady `mode` load (None: idle)."""
    window_s = plan.profile_window_s
    with Sampler(handle) as sampler, _load(mode, plan.ramp_s + window_s + plan.tail_s) as load:
        t0 = _after(plan.ramp_s)
        t1 = _after(window_s)
        _after(plan.tail_s)  # readings past t1 to interpolate at the edge
    return {"load": mode or "none", **_window_stats(sampler.readings, t0, t1), **load.stats}


def _agreement(
    handle: Any, exporter_url: str | None, gpu: int, mode: str, plan: Plan, *, checked: bool
) -> dict[str, Any]:
    """Exporter energy at the window edges vs 20 ms power readings integrated over it.

    `checked`: the 5% limit applies (steady load). Under a bursty load the ~1 s averaging of
    H100 power readings makes the integral lag the counter; that figure is informational.
    """
    if exporter_url is None:
        raise RuntimeError("the exporter did not start")
    seconds = plan.ramp_s + plan.agreement_window_s + plan.tail_s
    with Sampler(handle) as sampler, _load(mode, seconds) as load:
        _after(plan.ramp_s)
        t0, e0 = _scrape_energy(exporter_url, gpu)
        _after(plan.agreement_window_s)
        t1, e1 = _scrape_energy(exporter_url, gpu)
        _after(plan.tail_s)
    stats = _window_stats(sampler.readings, t0, t1)
    exporter_j = e1 - e0
    integrated_j = stats["sampled_power_integral_j"]
    deviation = (exporter_j - integrated_j) / integrated_j
    instant_j = stats["instant_power_integral_j"]
    figures = {
        "load": mode,
        "exporter_energy_j": exporter_j,
        "power_integral_j": integrated_j,
        "relative_deviation": deviation,
        "relative_deviation_vs_instant_power": (
            None if instant_j is None else (exporter_j - instant_j) / instant_j
        ),
        **stats,
        **load.stats,
    }
    if checked:
        figures["limit"] = _AGREEMENT_LIMIT
        figures["within_limit"] = abs(deviation) <= _AGREEMENT_LIMIT
    return figures


def _read_cost(handle: Any, exporter_url: str | None, gpu: int) -> dict[str, Any]:
    """How long reading this GPU takes: jouletune's sample(), each NVML call, a scrape."""
    sys.path.insert(0, str(_SRC))
    from jouletune.gpu import open_nvml_gpus

    nvml_gpu = open_nvml_gpus([gpu])[0]
    calls: dict[str, Callable[[], object]] = {
        "NvmlGpu.sample": nvml_gpu.sample,
        "nvmlDeviceGetTotalEnergyConsumption": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(
            handle
        ),
        "nvmlDeviceGetPowerUsage": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        "nvmlDeviceGetPowerManagementLimit": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(
            handle
        ),
        "nvmlDeviceGetClockInfo": lambda: pynvml.nvmlDeviceGetClockInfo(
            handle, pynvml.NVML_CLOCK_SM
        ),
        "nvmlDeviceGetUtilizationRates": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        "nvmlDeviceGetMemoryInfo": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle),
        "nvmlDeviceGetTemperature": lambda: pynvml.nvmlDeviceGetTemperature(
            handle, pynvml.NVML_TEMPERATURE_GPU
        ),
    }
    if exporter_url is not None:
        calls["http_metrics_scrape_1_gpu"] = lambda: _http_get(exporter_url + "/metrics")
    return {
        name: _time_ms(fn, 300 if name.startswith("http") else 1000) for name, fn in calls.items()
    }


def _time_ms(fn: Callable[[], object], n: int) -> dict[str, float]:
    for _ in range(20):
        fn()
    elapsed = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        elapsed.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(elapsed, n=100, method="inclusive")
    return {"n": n, "p50_ms": cuts[49], "p99_ms": cuts[98], "mean_ms": statistics.fmean(elapsed)}


def _window_stats(readings: list[Reading], t0: float, t1: float) -> dict[str, Any]:
    inside = [r for r in readings if t0 <= r.t_s <= t1]
    if len(inside) < 10:
        raise RuntimeError(f"only {len(inside)} readings in the window")
    duration = t1 - t0
    counter_j = _interp(readings, t1, "energy_j") - _interp(readings, t0, "energy_j")
    integral_j = _integrate(readings, t0, t1, "power_w")
    instant = [r for r in readings if r.power_instant_w is not None]
    gaps = [b.t_s - a.t_s for a, b in itertools.pairwise(inside)]
    return {
        "window_s": duration,
        "readings": len(inside),
        "max_reading_gap_ms": max(gaps) * 1000,
        "counter_energy_j": counter_j,
        "counter_avg_power_w": counter_j / duration,
        "sampled_power_integral_j": integral_j,
        "sampled_avg_power_w": integral_j / duration,
        "instant_power_integral_j": (
            _integrate(instant, t0, t1, "power_instant_w") if len(instant) > 10 else None
        ),
        "sm_clock_hz": _summary([r.sm_clock_hz for r in inside]),
        "utilization_ratio": _summary([r.utilization_ratio for r in inside]),
        "temperature_c": _summary([r.temperature_c for r in inside]),
        "power_w": _summary([r.power_w for r in inside]),
    }


def _summary(values: list[float]) -> dict[str, float] | None:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return None
    return {"mean": statistics.fmean(known), "min": min(known), "max": max(known)}


def _interp(readings: list[Reading], t: float, field: str) -> float:
    """Linear interpolation of `field` at time `t`."""
    for a, b in itertools.pairwise(readings):
        if a.t_s <= t <= b.t_s:
            va, vb = getattr(a, field), getattr(b, field)
            return float(va + (vb - va) * (t - a.t_s) / (b.t_s - a.t_s))
    raise RuntimeError(f"no readings around t={t:.3f}")


def _integrate(readings: list[Reading], t0: float, t1: float, field: str) -> float:
    """Trapezoidal integral of `field` over [t0, t1], interpolating at both edges."""
    points = [(t0, _interp(readings, t0, field))]
    points += [(r.t_s, float(getattr(r, field))) for r in readings if t0 < r.t_s < t1]
    points.append((t1, _interp(readings, t1, field)))
    return sum(
        (t_b - t_a) * (v_a + v_b) / 2 for (t_a, v_a), (t_b, v_b) in itertools.pairwise(points)
    )


def _after(seconds: float) -> float:
    """Wait `seconds` (the load keeps running meanwhile); return perf_counter() then."""
    time.sleep(seconds)
    return time.perf_counter()


@dataclass
class _LoadInfo:
    stats: dict[str, Any]


@contextmanager
def _load(mode: str | None, seconds: float) -> Iterator[_LoadInfo]:
    """Run the torch load in a child process; the block starts once it is warm."""
    info = _LoadInfo(stats={})
    if mode is None:
        yield info
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOAD_SCRIPT, mode, str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"load process did not start: {line!r}")
        yield info
        out, _ = proc.communicate(timeout=seconds + 60)
        info.stats = {"load_result": json.loads(out.strip().splitlines()[-1])}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def _exporter(gpu: int) -> Iterator[str]:
    """The real `jouletune exporter` process on loopback, reading NVML."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_SRC), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["exporter", "--host", "127.0.0.1", "--port", str(port), "--gpus", str(gpu)]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jouletune", *args], env=env, stdout=log, stderr=log
        )
        try:
            _wait_healthy(url + "/healthz", proc, log)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _http_get(url)
            return
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip()[-500:]
                raise RuntimeError(f"jouletune exporter did not become healthy: {tail}") from None
            time.sleep(0.05)


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _scrape_energy(url: str, gpu: int) -> tuple[float, float]:
    """(perf_counter at the request's midpoint, energy counter J) from one scrape."""
    start = time.perf_counter()
    text = _http_get(url + "/metrics")
    mid = (start + time.perf_counter()) / 2
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "jouletune_gpu_energy_joules_total" and sample.labels["gpu"] == str(
                gpu
            ):
                return mid, float(sample.value)
    raise RuntimeError("the exporter's /metrics has no energy counter for the GPU")


def _environment(handle: Any) -> dict[str, Any]:
    cuda = pynvml.nvmlSystemGetCudaDriverVersion()
    min_mw, max_mw = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
    return {
        "gpu_name": pynvml.nvmlDeviceGetName(handle),
        "gpu_uuid": pynvml.nvmlDeviceGetUUID(handle),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
        "power_limit_range_w": [min_mw / 1000.0, max_mw / 1000.0],
        "default_power_limit_w": pynvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000.0,
        "sm_clock_max_hz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM) * 1e6,
        "python": platform.python_version(),
        "packages": {
            name: _version(name) for name in ("torch", "nvidia-ml-py", "prometheus-client")
        },
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sample_period_s": _SAMPLE_PERIOD_S,
    }


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
