"""`power_limit()` and `clock_lock()`: the one place jouletune changes a GPU's power limit or
locks its SM clock.

Every setting is read before it is changed and put back to that value however the block
ends: normal exit, exception, or SIGTERM (Kubernetes stops a pod with SIGTERM; a GPU left
capped or locked would slow the next workload on it). Zeus restores `max(power_limits)`
instead; we restore what we found. With a `LimitStore`, the setting as found is also written
to disk before the first change and deleted once it is back, so that after a SIGKILL the next
run restores it (`_state.py`); a record a dead run left for a GPU is restored before that GPU
is changed.

The SM clock lock pins the clock at T (NVML's locked clocks with min = max = T, as
`nvidia-smi -lgc T,T`), not a cap [min, T]:

- a pinned clock is what gets measured and what gets adopted: the GPU's boost algorithm has no
  say, so a recommendation reproduces the trial that measured it;
- under load GPU Boost runs at the highest clock it may, so a cap [min, T] would run at T
  too; the two differ only while the GPU idles, where a loaded GPU reports its highest clock
  (P0), so pinning it at T <= that cannot raise its idle clock;
- the power limit still wins: a power brake lowers the clock below a lock, so a step runs at
  min(T, the highest clock under the limit), and the two knobs compose as one model
  (`jouletune.gpu.simulated.plan_step`).

NVML cannot read an active lock back (there is no getter), so "as found" for a clock lock is
"not locked by jouletune": before the first lock the SM clock and the highest supported
clock are read (and written to the state file, for the reader), and restoring resets the
lock (`nvmlDeviceResetGpuLockedClocks`). A lock someone else set before jouletune ran is not
seen, and that reset removes it.
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
from typing import Any, ClassVar

from jouletune.gpu._errors import GpuError
from jouletune.gpu._restore import take_over
from jouletune.gpu._state import GpuSetting, LimitRecord, LimitStore
from jouletune.gpu._types import Gpu

__all__ = [
    "ClockLocks",
    "PowerLimits",
    "check_clock_lock",
    "check_power_limit",
    "clock_lock",
    "held_clock_locks",
    "held_power_limits",
    "power_limit",
]

_log = logging.getLogger(__name__)

# NVML stores limits in integer milliwatts; closer than this is "the same limit".
_SAME_LIMIT_W = 0.0005


@dataclass
class _Change:
    gpu: Gpu
    found: float | None  # the setting as found: a limit in W; None for "no clock lock"
    now: float | None = None  # what this holder wrote last (a lock cannot be read back)
    restored: bool = False
    recorded: bool = False  # this change wrote the GPU's state file, deleted once restored


class _HeldSetting:
    """Changes of one GPU setting that remember each GPU's setting as first found, to put it
    back; `PowerLimits` and `ClockLocks` say how their setting is read, written and undone.

    Args:
        store: where the settings as found are written before they change, for the next run
            to restore after a crash; None keeps them in memory only.
    """

    setting: ClassVar[GpuSetting]

    def __init__(self, *, store: LimitStore | None = None) -> None:
        self._changes: list[_Change] = []
        self._store = store
        self._closed_by: str | None = None  # why no further change is allowed

    def restore(self) -> None:
        """Put every changed GPU back to its setting as found."""
        self._restore(self._changes)

    def close(self, why: str) -> None:
        """Put every GPU back and refuse any later change (`why` says what ended the holder):
        code the SIGTERM handler interrupted must not change a setting after it was put back,
        for then nothing would put it back again."""
        self._closed_by = why
        self.restore()

    # --- what each setting defines --------------------------------------------------------

    def _validate(self, gpus: Sequence[Gpu], value: float) -> None:
        raise NotImplementedError

    def _read(self, gpu: Gpu) -> float | None:
        """The setting as found now (before any dead run's record is taken into account)."""
        raise NotImplementedError

    def _write(self, gpu: Gpu, value: float | None) -> None:
        """Set `value`; None (the as-found of a clock lock) undoes the setting."""
        raise NotImplementedError

    def _save(self, store: LimitStore, change: _Change) -> bool:
        """Write the setting as found to `store` (False: the GPU has no address)."""
        raise NotImplementedError

    def _found_in(self, record: LimitRecord) -> float | None:
        """The setting as found per a dead run's record of it."""
        raise NotImplementedError

    def _said(self, value: float | None) -> str:
        raise NotImplementedError

    # --- the bookkeeping both share -------------------------------------------------------

    def _apply(self, gpus: Sequence[Gpu], value: float | None) -> None:
        if value is None:
            self._restore([c for c in self._changes if c.gpu in gpus])
            return
        self._validate(gpus, value)
        for gpu in gpus:
            self._apply_one(gpu, value)

    def _apply_one(self, gpu: Gpu, value: float) -> None:
        if self._closed():
            raise self._closed_error(gpu)
        change = self._change_of(gpu)
        if change is not None and not change.restored and _same(change.now, value):
            return
        current = self._read(gpu) if change is None or change.restored else change.now
        if self._store is not None and (change is None or change.restored):
            # A setting a crashed run left is not "as found": put its record's back.
            record = take_over(self._store, gpu, self.setting)
            current = current if record is None else self._found_in(record)
        if (change is None or change.restored) and _same(current, value):
            return  # already as asked, and as found: nothing to write or to put back
        if change is None:
            change = _Change(gpu=gpu, found=current)
            self._record(change)
            # Remembered before the write: if the write half-succeeds we still restore.
            self._changes.append(change)
        elif change.restored:
            change.found = current  # as found now: someone may have changed it meanwhile
            self._record(change)
            change.restored = False
        change.now = value
        self._write(gpu, value)
        if self._closed():
            # SIGTERM put every GPU back while this write was on its way: put this one back too.
            change.restored = False
            self._restore([change])
            raise self._closed_error(gpu)

    def _closed(self) -> bool:
        return self._closed_by is not None

    def _closed_error(self, gpu: Gpu) -> GpuError:
        return GpuError(
            f"GPU {gpu.index} {self.setting.noun} left as found: settings were put back on "
            f"{self._closed_by}"
        )

    def _record(self, change: _Change) -> None:
        """Write the setting as found to disk (raises GpuError, before anything changed)."""
        store = self._store
        # Another holder in this process wrote the file already; its setting is the one found.
        change.recorded = (
            store is not None
            and not store.owned_here(change.gpu, self.setting)
            and self._save(store, change)
        )

    def _change_of(self, gpu: Gpu) -> _Change | None:
        return next((c for c in self._changes if c.gpu is gpu), None)

    def _restore(self, changes: Sequence[_Change]) -> None:
        """Put back every setting not yet restored and delete its state file; try all GPUs
        before raising the first error (a GPU not restored keeps its file, for the next run)."""
        first_error: GpuError | None = None
        noun = self.setting.noun
        for change in reversed(changes):
            if change.restored:
                continue
            try:
                self._write(change.gpu, change.found)
                change.restored = True
                change.now = change.found
                _log.info("GPU %d %s %s", change.gpu.index, noun, self._said(change.found))
                if change.recorded and self._store is not None:
                    self._store.drop(change.gpu, self.setting)
                    change.recorded = False
            except Exception as err:  # every GPU gets its try; the first error is raised after
                _log.error("GPU %d %s NOT restored: %s", change.gpu.index, noun, err)
                if not isinstance(err, GpuError):
                    err = GpuError(f"GPU {change.gpu.index} {noun} NOT restored: {err!r}")
                first_error = first_error or err
        if first_error is not None:
            raise first_error


class PowerLimits(_HeldSetting):
    """Power-limit changes that remember each GPU's limit as first found, to put it back.

    Use inside `held_power_limits()`, which restores everything however its block ends.

    Args:
        store: where the limits as found are written before they change, for the next run
            to restore after a crash; None keeps them in memory only.
    """

    setting = GpuSetting.POWER_LIMIT

    def apply(self, gpus: Sequence[Gpu], watts: float | None) -> None:
        """Cap every GPU in `gpus` at `watts`; None puts each back to its limit as found.

        A GPU already at the limit asked for is not written.

        Raises:
            ValueError: `watts` is outside a GPU's `power_limit_range()`.
            GpuError: a limit could not be read or set.
        """
        self._apply(gpus, watts)

    def _validate(self, gpus: Sequence[Gpu], value: float) -> None:
        check_power_limit(gpus, value)

    def _read(self, gpu: Gpu) -> float | None:
        current_w = gpu.sample().power_limit_w
        if current_w is None:
            raise GpuError(f"GPU {gpu.index} ({gpu.name}) cannot report its power limit")
        return current_w

    def _write(self, gpu: Gpu, value: float | None) -> None:
        assert value is not None, "a power limit is always a number of watts"
        gpu.set_power_limit_w(value)

    def _save(self, store: LimitStore, change: _Change) -> bool:
        return store.save(change.gpu, setting=self.setting, original_w=change.found)

    def _found_in(self, record: LimitRecord) -> float | None:
        return record.original_w

    def _said(self, value: float | None) -> str:
        return f"restored to {value:g} W"


class ClockLocks(_HeldSetting):
    """SM clock locks that are undone (reset) once their holder ends; see the module
    docstring for why a lock pins [T, T] and why undoing it means resetting.

    Use inside `held_clock_locks()`, which resets every lock however its block ends.

    Args:
        store: where the record that jouletune locked a GPU is written before the lock, for
            the next run to reset it after a crash; None keeps it in memory only.
    """

    setting = GpuSetting.SM_CLOCK_LOCK

    def apply(self, gpus: Sequence[Gpu], mhz: int | None) -> None:
        """Lock every GPU in `gpus` at `mhz`; None resets the locks this holder set.

        A GPU this holder already locked at `mhz` is not written again.

        Raises:
            ValueError: `mhz` is outside a GPU's `sm_clock_range()`.
            GpuError: a clock range could not be read, or a lock could not be set.
        """
        self._apply(gpus, mhz)

    def _validate(self, gpus: Sequence[Gpu], value: float) -> None:
        check_clock_lock(gpus, value)

    def _read(self, gpu: Gpu) -> float | None:
        # NVML has no readback of a lock: what is found is "not locked by jouletune".
        return None

    def _write(self, gpu: Gpu, value: float | None) -> None:
        gpu.set_sm_clock_lock_mhz(None if value is None else round(value))

    def _save(self, store: LimitStore, change: _Change) -> bool:
        gpu = change.gpu
        if gpu_clock := gpu.sample().sm_clock_hz:
            found_mhz: float | None = round(gpu_clock / 1e6, 1)
        else:
            found_mhz = None
        return store.save(
            gpu,
            setting=self.setting,
            found_sm_clock_mhz=found_mhz,
            max_sm_clock_mhz=gpu.sm_clock_range().max_mhz,
        )

    def _found_in(self, record: LimitRecord) -> float | None:
        return None

    def _said(self, value: float | None) -> str:
        return "reset" if value is None else f"set to {value:g} MHz"


def check_power_limit(gpus: Sequence[Gpu], watts: float) -> None:
    """What `power_limit()` checks before it writes: `watts` within every GPU's range.

    Raises:
        ValueError: `watts` is outside a GPU's `power_limit_range()`.
        GpuError: a range could not be read.
    """
    for gpu in gpus:
        rng = gpu.power_limit_range()
        if not rng.min_w <= watts <= rng.max_w:
            raise ValueError(
                f"power limit {watts:g} W is outside GPU {gpu.index} ({gpu.name})'s range "
                f"{rng.min_w:g}-{rng.max_w:g} W"
            )


def check_clock_lock(gpus: Sequence[Gpu], mhz: float) -> None:
    """What `clock_lock()` checks before it locks: `mhz` within every GPU's clocks.

    Raises:
        ValueError: `mhz` is outside a GPU's `sm_clock_range()`.
        GpuError: a clock range could not be read (the GPU cannot lock its clock).
    """
    for gpu in gpus:
        rng = gpu.sm_clock_range()
        if not rng.min_mhz <= mhz <= rng.max_mhz:
            raise ValueError(
                f"SM clock {mhz:g} MHz is outside GPU {gpu.index} ({gpu.name})'s "
                f"supported clocks {rng.min_mhz}-{rng.max_mhz} MHz"
            )


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
def held_clock_locks(*, store: LimitStore | None = None) -> Iterator[ClockLocks]:
    """A `ClockLocks` whose locks are reset on normal exit, on an exception, and on SIGTERM,
    as `held_power_limits()` restores limits; with `store`, each lock is on disk while held.

    Raises:
        GpuError: a lock could not be reset.
    """
    locks = ClockLocks(store=store)
    with _restore_on_sigterm(locks):
        try:
            yield locks
        finally:
            locks.restore()


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


@contextmanager
def clock_lock(
    gpus: Sequence[Gpu], mhz: int | None, *, store: LimitStore | None = None
) -> Iterator[None]:
    """Lock every GPU in `gpus` at `mhz` for the block, then reset each lock.

    `mhz=None` changes nothing. The locks are undone as `held_clock_locks()` undoes them;
    with `store`, the record that jouletune locked each GPU is on disk meanwhile.

    Raises:
        ValueError: `mhz` is outside a GPU's `sm_clock_range()`.
        GpuError: a lock could not be set or reset.
    """
    if mhz is None:
        yield
        return
    with held_clock_locks(store=store) as locks:
        locks.apply(gpus, mhz)
        yield


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < _SAME_LIMIT_W


@contextmanager
def _restore_on_sigterm(held: _HeldSetting) -> Iterator[None]:
    """While the block runs, SIGTERM restores `held` before the previous handler acts."""
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
            held.close("SIGTERM")
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
