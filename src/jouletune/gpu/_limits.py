"""`power_limit()`: the one place jouletune changes a GPU's power limit.

Every limit is read before it is changed and put back to that value however the block ends:
normal exit, exception, or SIGTERM (Kubernetes stops a pod with SIGTERM; a GPU left capped
would slow the next workload on it). Zeus restores `max(power_limits)` instead; we restore
what we found.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from jouletune.gpu._errors import GpuError
from jouletune.gpu._types import Gpu

__all__ = ["PowerLimits", "held_power_limits", "power_limit"]

_log = logging.getLogger(__name__)

# NVML stores limits in integer milliwatts; closer than this is "the same limit".
_SAME_LIMIT_W = 0.0005


@dataclass
class _Change:
    gpu: Gpu
    previous_w: float
    restored: bool = False


class PowerLimits:
    """Power-limit changes that remember each GPU's limit as first found, to put it back.

    Use inside `held_power_limits()`, which restores everything however its block ends.
    """

    def __init__(self) -> None:
        self._changes: list[_Change] = []

    def apply(self, gpus: Sequence[Gpu], watts: float | None) -> None:
        """Cap every GPU in `gpus` at `watts`; None puts each back to its limit as found.

        A GPU already at the limit asked for is not written.

        Raises:
            ValueError: `watts` is outside a GPU's `power_limit_range()`.
            GpuError: a limit could not be read or set.
        """
        if watts is None:
            _restore([c for c in self._changes if c.gpu in gpus])
            return
        _validate(gpus, watts)
        for gpu in gpus:
            change = self._change_of(gpu)
            current_w = gpu.sample().power_limit_w
            if current_w is None:
                raise GpuError(f"GPU {gpu.index} ({gpu.name}) cannot report its power limit")
            if abs(current_w - watts) < _SAME_LIMIT_W:
                continue
            if change is None:
                # Recorded before the write: if the write half-succeeds we still restore.
                self._changes.append(_Change(gpu=gpu, previous_w=current_w))
            else:
                change.restored = False
            gpu.set_power_limit_w(watts)

    def restore(self) -> None:
        """Put every changed GPU back to its limit as found."""
        _restore(self._changes)

    def _change_of(self, gpu: Gpu) -> _Change | None:
        return next((c for c in self._changes if c.gpu is gpu), None)


@contextmanager
def held_power_limits() -> Iterator[PowerLimits]:
    """A `PowerLimits` whose changes are undone on normal exit, on an exception, and on SIGTERM
    (when entered in the main thread): the handler restores, then hands the signal to the
    handler that was installed before (by default: the process dies of SIGTERM).

    Raises:
        GpuError: a limit could not be restored.
    """
    limits = PowerLimits()
    with _restore_on_sigterm(limits):
        try:
            yield limits
        finally:
            limits.restore()


@contextmanager
def power_limit(gpus: Sequence[Gpu], watts: float | None) -> Iterator[None]:
    """Cap every GPU in `gpus` at `watts` for the block, then restore each one's previous limit.

    `watts=None` changes nothing. A GPU already at `watts` is not written. The previous limits
    are restored as `held_power_limits()` restores them.

    Raises:
        ValueError: `watts` is outside a GPU's `power_limit_range()`.
        GpuError: a limit could not be read, set or restored.
    """
    if watts is None:
        yield
        return
    with held_power_limits() as limits:
        limits.apply(gpus, watts)
        yield


def _validate(gpus: Sequence[Gpu], watts: float) -> None:
    for gpu in gpus:
        rng = gpu.power_limit_range()
        if not rng.min_w <= watts <= rng.max_w:
            raise ValueError(
                f"power limit {watts:g} W is outside GPU {gpu.index} ({gpu.name})'s range "
                f"{rng.min_w:g}-{rng.max_w:g} W"
            )


def _restore(changes: Sequence[_Change]) -> None:
    """Put back every limit not yet restored; try all GPUs before raising the first error."""
    first_error: GpuError | None = None
    for change in reversed(changes):
        if change.restored:
            continue
        try:
            change.gpu.set_power_limit_w(change.previous_w)
            change.restored = True
            _log.info("GPU %d power limit restored to %g W", change.gpu.index, change.previous_w)
        except GpuError as err:
            _log.error("GPU %d power limit NOT restored: %s", change.gpu.index, err)
            first_error = first_error or err
    if first_error is not None:
        raise first_error


@contextmanager
def _restore_on_sigterm(limits: PowerLimits) -> Iterator[None]:
    """While the block runs, SIGTERM restores `limits` before the previous handler acts."""
    if threading.current_thread() is not threading.main_thread():
        # Python only lets the main thread install signal handlers; try/finally still covers
        # normal exit and exceptions there.
        yield
        return
    # None means a handler installed from C; treat it as the default action.
    previous = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL
    if previous == signal.SIG_IGN:
        # The process chose to survive SIGTERM, so the block keeps running and keeps its cap.
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> Any:
        try:
            limits.restore()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if callable(previous):
                previous(signum, frame)
            else:  # SIG_DFL: die of the signal, as the process would have without us
                os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)
