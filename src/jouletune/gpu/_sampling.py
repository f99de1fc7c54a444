"""`sample_all()`: read many GPUs at once, as cheaply as each kind allows.

Measured on an H100 (benchmarks/results/h100-validation): NVML's total-energy counter read
takes ~3 ms (p50; p99 16 ms) while every other reading takes microseconds, so eight GPUs
read one after another would cost ~25 ms. NVML calls go through ctypes, which releases the
GIL, so several NVML GPUs are read in parallel threads. A sim-server's GPUs come back from one
GET.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from jouletune.gpu._nvml import NvmlGpu
from jouletune.gpu._remote import RemoteGpu, ServedGpu
from jouletune.gpu._types import Gpu, GpuSample

__all__ = ["sample_all"]

# Hosts have at most 16 GPUs per NVML instance in practice (HGX: 8).
_MAX_PARALLEL_READS = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def sample_all(gpus: Sequence[Gpu]) -> list[GpuSample]:
    """Read every GPU once, in order: NVML GPUs in parallel, each sim-server with one GET."""
    samples: dict[int, GpuSample] = {}
    nvml = [(i, g) for i, g in enumerate(gpus) if isinstance(g, NvmlGpu)]
    if len(nvml) > 1:
        for (i, _), sample in zip(
            nvml, _executor().map(_sample, [g for _, g in nvml]), strict=True
        ):
            samples[i] = sample
    servers: dict[int, dict[int, ServedGpu]] = {}
    for i, gpu in enumerate(gpus):
        if i in samples:
            continue
        if isinstance(gpu, RemoteGpu):
            if gpu.server_key not in servers:
                servers[gpu.server_key] = gpu.read_server()
            samples[i] = gpu.pick(servers[gpu.server_key])
        else:
            samples[i] = gpu.sample()
    return [samples[i] for i in range(len(gpus))]


def _sample(gpu: Gpu) -> GpuSample:
    return gpu.sample()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=_MAX_PARALLEL_READS, thread_name_prefix="jouletune-gpu-read"
            )
        return _pool
