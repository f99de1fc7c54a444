"""Which GPUs the exporter serves: NVML's, or a sim-server's, opened once and then kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from jouletune.gpu import Gpu, GpuSample, sample_all

__all__ = ["GpuSource"]


class GpuSource:
    """The exported GPUs, opened on first success and read fresh on every call.

    A sim-server may start after its exporter sidecar, so opening is retried at each read
    until it works; until then reads raise the opener's `GpuError`.

    Args:
        open_gpus: opens the GPUs (e.g. `open_nvml_gpus` or `open_sim_gpus` with arguments).
        where: where the GPUs come from, for messages (`NVML`, `sim-server http://…`).
        collect_interval_s: serve the same read for this long before reading again, as
            dcgm-exporter does (its `--collect-interval`, 30 s by default); 0 reads on every
            scrape.
    """

    def __init__(
        self,
        *,
        open_gpus: Callable[[], Sequence[Gpu]],
        where: str,
        collect_interval_s: float = 0.0,
    ) -> None:
        self._open_gpus = open_gpus
        self._gpus: Sequence[Gpu] | None = None
        self._lock = threading.Lock()
        self._interval_s = collect_interval_s
        self._last: tuple[float, list[GpuSample]] | None = None
        self.where = where

    def gpus(self) -> Sequence[Gpu]:
        """The opened GPUs; opens them now if that has not succeeded yet."""
        with self._lock:
            if self._gpus is None:
                self._gpus = self._open_gpus()
            return self._gpus

    def opened(self) -> Sequence[Gpu]:
        """The GPUs if they were opened already, else none; never opens them."""
        with self._lock:
            return self._gpus or ()

    def read(self) -> list[GpuSample]:
        """A sample of every GPU (one GET for all GPUs of a sim-server): fresh, or the last one
        while it is younger than the collect interval."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self._interval_s:
            return self._last[1]
        samples = sample_all(self.gpus())
        self._last = (now, samples)
        return samples

    def health(self) -> str:
        """One line saying the GPUs were just read; raises why not."""
        samples = self.read()
        names = ", ".join(f"{s.index}:{s.name}" for s in samples)
        return f"ok: {len(samples)} GPU(s) from {self.where} ({names})"
