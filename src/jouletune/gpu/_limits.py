"""`power_limit()`: the one place jouletune changes a GPU's power limit.

Every limit is read before it is changed and put back to that value however the block ends:
normal exit, exception, or SIGTERM (Kubernetes stops a pod with SIGTERM; a GPU left capped
would slow the next workload on it). Zeus restores `max(power_limits)` instead; we restore
what we found. With a `LimitStore`, the limit as found is also written to disk before the
first change and deleted once it is back, so that after a SIGKILL the next run restores it
(`_state.py`); a record a dead run left for a GPU is restored before that GPU is changed.
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
from jouletune.gpu._state import LimitStore, take_over
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
    recorded: bool = False  # this change wrote the GPU's state file, deleted once restored


class PowerLimits:
    """Power-limit changes that remember each GPU's limit as first found, to put it back.

    Use inside `held_power_limits()`, which restores everything however its block ends.

    Args:
        store: where the limits as found are written before they change, for the next run
            to restore after a crash; None keeps them in memory only.
    """

    def __init__(self, *, store: LimitStore | None = None) -> None:
        self._changes: list[_Change] = []
        self._store = store

    def apply(self, gpus: Sequence[Gpu], watts: float | None) -> None:
        """Cap every GPU in `gpus` at `watts`; None puts each back to its limit as found.

        A GPU already at the limit asked for is not written.

        Raises:
            ValueError: `watts` is outside a GPU's `power_limit_range()`.
            GpuError: a limit could not be read or set.
        """
        if watts is None:
            _restore([c for c in self._changes if c.gpu in gpus], self._store)
            return
        _validate(gpus, watts)
        for gpu in gpus:
            self._apply_one(gpu, watts)

    def restore(self) -> None:
        """Put every changed GPU back to its limit as found."""
        _restore(self._changes, self._store)

    def _apply_one(self, gpu: Gpu, watts: float) -> None:
        change = self._change_of(gpu)
        current_w = gpu.sample().power_limit_w
        if current_w is None:
            raise GpuError(f"GPU {gpu.index} ({gpu.name}) cannot report its power limit")
        if self._store is not None and (change is None or change.restored):
            # A cap a crashed run left is not "the limit as found": put its record's back.
            found_w = take_over(self._store, gpu)
            current_w = current_w if found_w is None else found_w
        if abs(current_w - watts) < _SAME_LIMIT_W:
            return
        if change is None:
            change = _Change(gpu=gpu, previous_w=current_w)
            self._record(change)
            # Remembered before the write: if the write half-succeeds we still restore.
            self._changes.append(change)
        elif change.restored:
            self._record(change)
            change.restored = False
        gpu.set_power_limit_w(watts)

    def _record(self, change: _Change) -> None:
        """Write the limit as found to disk (raises GpuError, before anything changed)."""
        store = self._store
        # Another holder in this process wrote the file already; its limit is the one found.
        change.recorded = (
            store is not None
            and not store.owned_here(change.gpu)
            and store.save(change.gpu, change.previous_w)
        )

    def _change_of(self, gpu: Gpu) -> _Change | None:
        return next((c for c in self._changes if c.gpu is gpu), None)


@contextmanager
def held_power_limits(*, store: LimitStore | None = None) -> Iterator[PowerLimits]:
    """A `PowerLimits` whose changes are undone on normal exit, on an exception, and on SIGTERM
    (when entered in the main thread): the handler restores, then hands the signal to the
    handler that was installed before (by default: the process dies of SIGTERM). With
    `store`, each limit as found is on disk while it is changed (see `PowerLimits`).

    Raises:
        GpuError: a limit could not be restored.
    """
    limits = PowerLimits(store=store)
    with _restore_on_sigterm(limits):
        try:
            yield limits
        finally:
            limits.restore()


@contextmanager
def power_limit(
    gpus: Sequence[Gpu], watts: float | None, *, store: LimitStore | None = None
) -> Iterator[None]:
    """Cap every GPU in `gpus` at `watts` for the block, then restore each one's previous limit.

    `watts=None` changes nothing. A GPU already at `watts` is not written. The previous limits
    are restored as `held_power_limits()` restores them; with `store`, they are on disk
    meanwhile.

    Raises:
        ValueError: `watts` is outside a GPU's `power_limit_range()`.
        GpuError: a limit could not be read, set or restored.
    """
    if watts is None:
        yield
        return
    with held_power_limits(store=store) as limits:
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


def _restore(changes: Sequence[_Change], store: LimitStore | None) -> None:
    """Put back every limit not yet restored and delete its state file; try all GPUs before
    raising the first error (a GPU not restored keeps its file, for the next run)."""
    first_error: GpuError | None = None
    for change in reversed(changes):
        if change.restored:
            continue
        try:
            change.gpu.set_power_limit_w(change.previous_w)
            change.restored = True
            _log.info("GPU %d power limit restored to %g W", change.gpu.index, change.previous_w)
            if change.recorded and store is not None:
                store.drop(change.gpu)
                change.recorded = False
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
