"""Putting back what a dead run left changed, from the records `LimitStore` keeps (`_state`).

`restore_left_limits` runs before anything else (the CLI's `tune`, an exporter that caps);
`take_over` runs before a GPU's setting is first changed. A record whose writer still runs
is left alone; one whose GPU server is gone is dropped (the simulated GPU went with it); a
real GPU that cannot be reached keeps its file for the next run.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jouletune.gpu._errors import GpuError
from jouletune.gpu._nvml import NvmlGpu, open_nvml_gpus
from jouletune.gpu._remote import open_remote_gpus
from jouletune.gpu._state import NVML_ADDRESS, GpuSetting, LimitRecord, LimitStore
from jouletune.gpu._types import Gpu

__all__ = ["Restored", "restore_left_limits", "take_over"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Restored:
    """A setting put back from a record: a power limit the GPU had at `left_w` (None:
    unreadable, or a clock lock, which NVML cannot read back)."""

    record: LimitRecord
    left_w: float | None

    def message(self) -> str:
        """One line naming the GPU, what was put back and who left it."""
        rec = self.record
        if rec.setting is GpuSetting.SM_CLOCK_LOCK:
            where = f"GPU {rec.index} ({rec.uuid})"
            return f"reset {where} SM clock lock, left locked by {rec.writer()}"
        left = "" if self.left_w is None else f" from {self.left_w:g} W"
        return (
            f"restored GPU {rec.index} ({rec.uuid}) power limit to {rec.original_w:g} W{left}, "
            f"left changed by {rec.writer()}"
        )


def restore_left_limits(store: LimitStore, gpus: Sequence[Gpu] | None = None) -> list[Restored]:
    """Put back every setting (power limit, clock lock) a dead run recorded in `store`,
    delete its file, say so (log).

    With `gpus`, only the records of those GPUs (an exporter in a pod: the node's state
    directory also holds other pods' GPUs, whose holders it cannot see). Without, every
    record of the directory, each GPU found again where it lived; a record whose writer
    still runs on this host is left alone, and one whose GPU server is gone is dropped (the
    simulated GPU went with it).

    Raises:
        GpuError: one of `gpus` is held by a live jouletune, or a setting could not be put
            back (its file is kept for the next run).
    """
    if gpus is not None:
        return [
            restored
            for gpu in gpus
            for setting in GpuSetting
            if (restored := _restore_one(store, gpu, setting, strict=True)) is not None
        ]
    done: list[Restored] = []
    for path, record in store.records():
        if record is None or _kept_for_its_holder(store, record, path):
            continue
        gpu = _reopen(record, path, store)
        if gpu is None:
            continue
        try:
            if restored := _restore_one(store, gpu, record.setting, strict=False):
                done.append(restored)
        finally:
            if isinstance(gpu, NvmlGpu):
                gpu.close()
    return done


def refuse_left_changed(store: LimitStore) -> None:
    """For a run that must not change a GPU (read-only): refuse when a dead run left one
    changed, since its cap or lock is not the GPU as found and putting it back is a change.

    Raises:
        GpuError: a record in `store` whose writer is gone, or one that cannot be read (it
            may stand for a cap); the message names the GPU or the file, and what to do.
    """
    for path, record in store.records(strict=True):
        if record is not None and not store.held(path, record):
            raise GpuError(
                f"GPU {record.index} ({record.uuid}) was left changed by {record.writer()} "
                f"({path}); rerun without --read-only to {record.undo()} first"
            )


def take_over(store: LimitStore, gpu: Gpu, setting: GpuSetting) -> LimitRecord | None:
    """Before changing `gpu`'s `setting`: a dead run's record of it (the setting is put back
    now), or None when there is no record.

    Raises:
        GpuError: a live process holds the GPU, or the record's setting cannot be put back.
    """
    restored = _restore_one(store, gpu, setting, strict=True)
    return None if restored is None else restored.record


def _restore_one(
    store: LimitStore, gpu: Gpu, setting: GpuSetting, *, strict: bool
) -> Restored | None:
    record = store.find(gpu, setting)
    if record is None or store.owned_here(gpu, setting):
        return None
    if store.held(store.path(record.address, record.uuid, setting), record):
        message = (
            f"GPU {gpu.index} ({gpu.uuid}) {setting.noun} is held by a running "
            f"{record.writer()}: stop it first"
        )
        if strict:
            raise GpuError(message)
        _log.warning("%s; its record is left alone", message)
        return None
    left_w = None
    if setting is GpuSetting.POWER_LIMIT:
        try:
            left_w = gpu.sample().power_limit_w
        except GpuError:
            left_w = None
    _put_back(gpu, record)  # raises GpuError: the file stays for next time
    restored = Restored(record=record, left_w=left_w)
    _log.warning("%s", restored.message())
    store.drop(gpu, setting)
    return restored


def _put_back(gpu: Gpu, record: LimitRecord) -> None:
    """Undo what the record's writer changed: its limit as found, or no clock lock."""
    if record.setting is GpuSetting.SM_CLOCK_LOCK:
        gpu.set_sm_clock_lock_mhz(None)
        return
    assert record.original_w is not None, "a power-limit record has its limit"
    gpu.set_power_limit_w(record.original_w)


def _kept_for_its_holder(store: LimitStore, record: LimitRecord, path: Path) -> bool:
    if not store.held(path, record):
        return False
    _log.warning(
        "GPU state file %s: GPU %s is held by a running %s; left alone",
        path,
        record.uuid,
        record.writer(),
    )
    return True


def _reopen(record: LimitRecord, path: Path, store: LimitStore) -> Gpu | None:
    """The GPU of `record`, opened where it lived; None (with a log line) when it is gone."""
    try:
        if record.address == NVML_ADDRESS:
            return open_nvml_gpus([record.uuid])[0]
        url = urllib.parse.urlsplit(record.address)
        base = urllib.parse.urlunsplit((url.scheme, url.netloc, "", "", ""))
        return open_remote_gpus(base, path=url.path, selection=[record.uuid])[0]
    except (GpuError, ValueError) as err:
        if record.address == NVML_ADDRESS:
            # A real GPU keeps its cap until it is found again: keep the file.
            _log.error("cannot restore GPU %s from %s yet: %s", record.uuid, path, err)
            return None
        _log.warning(
            "dropping %s: GPU %s at %s is gone (%s), and its simulated limit with it",
            path,
            record.uuid,
            record.address,
            err,
        )
        store.forget(path)
        return None
