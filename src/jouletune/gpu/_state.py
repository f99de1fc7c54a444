"""GPU settings as first found, kept on disk until they are back, so a crash cannot hide them.

`PowerLimits` and `ClockLocks` put every setting back when their block ends, on an exception
and on SIGTERM; not after SIGKILL, the OOM killer or a power cut. So before one first changes
a GPU's setting it writes the setting as found to a state file (`LimitStore.save`: one file
per GPU and setting, named by the GPU's UUID, written to a temporary file and renamed into
place, with the writer's pid, host and time), and deletes the file once the setting is back.
A run that finds a file restores that setting before anything else (`restore_left_limits`,
in `_restore`) and says so: the cap or lock a crashed run left is never taken for "the
setting as found".

Whether the writer still runs is told by a lock, not by its pid: while a process holds a
setting it keeps an exclusive `flock` on the file's companion `NAME.lock`, which the kernel
drops when the process ends, however it ends. Pods of one node share the state directory
(a hostPath) but each has its own hostname and pid namespace, so a pid says nothing across
pods, while the lock does. A file without a companion (written before locks existed) falls
back to the writer's pid, host, boot and start time. Lock files stay behind when a setting
is back (deleting one would race with the next holder taking it); they are empty.

The two settings (`GpuSetting`):

- `power_limit`: the file holds the limit as found (`original_w`); restoring writes it back.
- `sm_clock_lock`: NVML cannot read an active clock lock back, so "as found" is "not locked
  by jouletune" and the file is the record that jouletune locked it, with the SM clock and
  the highest supported clock read before (`found_sm_clock_mhz`, `max_sm_clock_mhz`, for
  the reader); restoring resets the lock (`nvmlDeviceResetGpuLockedClocks`).

Where: `--state-dir`, else `$JOULETUNE_STATE_DIR`, else `$XDG_STATE_HOME/jouletune`, else
`/var/lib/jouletune` for root, else `~/.local/state/jouletune` (`default_state_dir`). In a pod
the directory is a hostPath, so the file outlives the pod.

A GPU is found again by where it lives (`address`: `nvml`, or the URL of the GPU API that
serves it, e.g. a sim-server's) and its UUID. GPUs simulated inside this process have no
address and no file: they end with the process.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from jouletune.gpu._errors import GpuError
from jouletune.gpu._nvml import NvmlGpu
from jouletune.gpu._remote import RemoteGpu
from jouletune.gpu._types import Gpu

__all__ = [
    "STATE_DIR_ENV",
    "GpuSetting",
    "LimitRecord",
    "LimitStore",
    "default_state_dir",
    "gpu_address",
]

STATE_DIR_ENV = "JOULETUNE_STATE_DIR"
NVML_ADDRESS = "nvml"
_SUFFIX = ".json"
_LOCK_SUFFIX = ".lock"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

_log = logging.getLogger(__name__)

# Files this process wrote and still owns, each with the descriptor that holds its lock:
# another `PowerLimits` of this process that meets one holds the GPU already (nested), it is
# not a crashed run's.
_OURS: dict[Path, int] = {}
_OURS_LOCK = threading.Lock()


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the state files go unless a flag says otherwise (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "jouletune"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/jouletune")
    return Path.home() / ".local" / "state" / "jouletune"


def gpu_address(gpu: Gpu) -> str | None:
    """Where another process finds `gpu` again: `nvml`, its GPU API's URL, or None for a GPU
    that lives only in this process."""
    if isinstance(gpu, NvmlGpu):
        return NVML_ADDRESS
    if isinstance(gpu, RemoteGpu):
        return gpu.api_url
    return None


class GpuSetting(StrEnum):
    """A GPU setting jouletune changes, always restores, and keeps on disk while changed."""

    POWER_LIMIT = "power_limit"
    SM_CLOCK_LOCK = "sm_clock_lock"

    @property
    def noun(self) -> str:
        """`power limit` or `SM clock lock`, for messages."""
        return "power limit" if self is GpuSetting.POWER_LIMIT else "SM clock lock"

    @property
    def file_suffix(self) -> str:
        """How a state file of this setting ends; power-limit files keep the name they had
        before clock locks existed, so a file an older jouletune left is still restored."""
        return _SUFFIX if self is GpuSetting.POWER_LIMIT else f".sm-clock-lock{_SUFFIX}"


@dataclass(frozen=True, kw_only=True)
class LimitRecord:
    """One GPU setting as found, written before jouletune first changed it.

    Attributes:
        uuid: the GPU's UUID (the key: indices differ between containers).
        address: where the GPU lives (`nvml`, or a GPU API's URL).
        index: the GPU's index where it was changed, for messages.
        name: the GPU's model name, for messages.
        setting: which setting this record is about.
        original_w: a power-limit record's limit as found, watts; what a later run restores.
        found_sm_clock_mhz: a clock-lock record's SM clock when jouletune first locked it.
        max_sm_clock_mhz: a clock-lock record's highest supported SM clock.
        pid: the process that changed the setting.
        host: that process's host name (a pod's name in a pod).
        boot_id: the kernel's boot id then (Linux), so a reused pid after a reboot is not
            taken for the writer.
        pid_start_ticks: the writer's start time in clock ticks after boot (Linux), so a
            reused pid is not taken for the writer.
        written_unix_s: when the file was written, unix seconds.
    """

    uuid: str
    address: str
    index: int
    name: str
    setting: GpuSetting = GpuSetting.POWER_LIMIT
    original_w: float | None = None
    found_sm_clock_mhz: float | None = None
    max_sm_clock_mhz: int | None = None
    pid: int
    host: str
    boot_id: str | None
    pid_start_ticks: int | None
    written_unix_s: float

    def __post_init__(self) -> None:
        if self.setting is GpuSetting.POWER_LIMIT and self.original_w is None:
            raise ValueError("lacks field 'original_w'")

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LimitRecord:
        """Read a file's content; raises ValueError when it is malformed."""
        try:
            return cls(
                uuid=str(data["uuid"]),
                address=str(data["address"]),
                index=int(data["index"]),
                name=str(data["name"]),
                # Files written before clock locks existed have no setting: power limits.
                setting=GpuSetting(data.get("setting", GpuSetting.POWER_LIMIT)),
                original_w=_opt_float(data.get("original_w")),
                found_sm_clock_mhz=_opt_float(data.get("found_sm_clock_mhz")),
                max_sm_clock_mhz=_opt_int(data.get("max_sm_clock_mhz")),
                pid=int(data["pid"]),
                host=str(data["host"]),
                boot_id=None if data.get("boot_id") is None else str(data["boot_id"]),
                pid_start_ticks=_opt_int(data.get("pid_start_ticks")),
                written_unix_s=float(data["written_unix_s"]),
            )
        except KeyError as err:
            raise ValueError(f"lacks field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"has a malformed field: {err}") from None

    def undo(self) -> str:
        """What restoring this record does, for messages: `restore its 700 W limit` or
        `reset its SM clock lock`."""
        if self.setting is GpuSetting.SM_CLOCK_LOCK:
            return "reset its SM clock lock"
        return f"restore its {self.original_w:g} W limit"

    def writer(self) -> str:
        """`jouletune pid 12 on host h (2026-01-02 03:04:05 UTC)`, for messages."""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.written_unix_s))
        return f"jouletune pid {self.pid} on host {self.host} ({when})"

    def writer_alive(self) -> bool:
        """True when the process that wrote this record still runs, by its pid: checkable
        only on its own host, so a record from another host, or another boot, reads as a
        dead run's. `LimitStore.held` asks the record's lock first."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        if self.boot_id is not None and self.boot_id != _boot_id():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process, alive
        ticks = _start_ticks(self.pid)
        return self.pid_start_ticks is None or ticks is None or ticks == self.pid_start_ticks


class LimitStore:
    """The state files of one directory; see the module docstring.

    Args:
        directory: where the files live; created on the first write.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"LimitStore({str(self.directory)!r})"

    def path(self, address: str, uuid: str, setting: GpuSetting = GpuSetting.POWER_LIMIT) -> Path:
        """The file of `setting` of the GPU `uuid` at `address`."""
        # Simulated GPUs repeat their UUIDs between servers: the server's URL tells them apart.
        where = "" if address == NVML_ADDRESS else "@" + urllib.parse.quote(address, safe="")
        name = urllib.parse.quote(uuid, safe="-_.") + where + setting.file_suffix
        return self.directory / name

    def find(self, gpu: Gpu, setting: GpuSetting = GpuSetting.POWER_LIMIT) -> LimitRecord | None:
        """The record of `gpu`'s `setting`, if a file holds one.

        Raises:
            GpuError: the file exists but cannot be read.
        """
        address = gpu_address(gpu)
        if address is None:
            return None
        return self._read(self.path(address, gpu.uuid, setting))

    def owned_here(self, gpu: Gpu, setting: GpuSetting = GpuSetting.POWER_LIMIT) -> bool:
        """True when this process wrote the file of `gpu`'s `setting` and has not restored
        it yet."""
        address = gpu_address(gpu)
        with _OURS_LOCK:
            return address is not None and self.path(address, gpu.uuid, setting) in _OURS

    def save(
        self,
        gpu: Gpu,
        *,
        setting: GpuSetting = GpuSetting.POWER_LIMIT,
        original_w: float | None = None,
        found_sm_clock_mhz: float | None = None,
        max_sm_clock_mhz: int | None = None,
    ) -> bool:
        """Write `gpu`'s `setting` as found, atomically; False for a GPU without an address.

        Raises:
            GpuError: the file cannot be written (then nothing may be changed).
        """
        address = gpu_address(gpu)
        if address is None:
            return False
        path = self.path(address, gpu.uuid, setting)
        record = LimitRecord(
            uuid=gpu.uuid,
            address=address,
            index=gpu.index,
            name=gpu.name,
            setting=setting,
            original_w=original_w,
            found_sm_clock_mhz=found_sm_clock_mhz,
            max_sm_clock_mhz=max_sm_clock_mhz,
            pid=os.getpid(),
            host=socket.gethostname(),
            boot_id=_boot_id(),
            pid_start_ticks=_start_ticks(os.getpid()),
            written_unix_s=time.time(),
        )
        try:
            self._lock(path, gpu)
            _write_atomically(path, json.dumps(record.to_json(), indent=2) + "\n")
        except OSError as err:
            self._unlock(path)
            left = "capped" if setting is GpuSetting.POWER_LIMIT else "with its SM clock locked"
            raise GpuError(
                f"cannot write the {setting.noun.replace(' ', '-')} state file {path} "
                f"({err.strerror or err}): without it a crash could leave GPU {gpu.index} "
                f"{left}; pass a writable --state-dir or set {STATE_DIR_ENV}"
            ) from None
        return True

    def held(self, path: Path, record: LimitRecord) -> bool:
        """True when the writer of `record` (the file at `path`) still holds its setting:
        its lock is taken (any process of this node, any pod), or, for a file without a
        lock, its pid still runs (`LimitRecord.writer_alive`)."""
        try:
            fd = os.open(_lock_path(path), os.O_RDONLY)
        except OSError:
            return record.writer_alive()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock, if we got it
        return False

    def _lock(self, path: Path, gpu: Gpu) -> None:
        """Take `path`'s lock for as long as this process holds the setting.

        Raises:
            GpuError: another process holds it.
            OSError: the lock file cannot be made.
        """
        with _OURS_LOCK:
            if path in _OURS:
                return
            lock = _lock_path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise GpuError(
                    f"GPU {gpu.index} ({gpu.uuid}) is held by another running jouletune "
                    f"(lock {lock}): stop it first"
                ) from None
            _OURS[path] = fd

    def _unlock(self, path: Path) -> None:
        with _OURS_LOCK:
            fd = _OURS.pop(path, None)
        if fd is not None:
            os.close(fd)

    def drop(self, gpu: Gpu, setting: GpuSetting = GpuSetting.POWER_LIMIT) -> None:
        """Delete the file of `gpu`'s `setting` (it is back); a file already gone is fine."""
        address = gpu_address(gpu)
        if address is not None:
            self.forget(self.path(address, gpu.uuid, setting))

    def records(self, *, strict: bool = False) -> list[tuple[Path, LimitRecord | None]]:
        """Every file of the directory with its record, oldest first; an unreadable file is
        logged and comes with None, or with `strict` raises its GpuError."""
        try:
            paths = sorted(self.directory.glob(f"*{_SUFFIX}"), key=_mtime)
        except OSError:
            return []
        out: list[tuple[Path, LimitRecord | None]] = []
        for path in paths:
            try:
                out.append((path, self._read(path)))
            except GpuError as err:
                if strict:
                    raise
                _log.error("%s", err)
                out.append((path, None))
        return out

    def _read(self, path: Path) -> LimitRecord | None:
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            raise GpuError(f"cannot read GPU state file {path}: {err.strerror}") from None
        try:
            return LimitRecord.from_json(json.loads(text))
        except (ValueError, AttributeError) as err:
            raise GpuError(
                f"GPU state file {path} is unreadable ({err}); check the GPU's power limit "
                "(nvidia-smi -q -d POWER) and clocks (nvidia-smi -q -d CLOCK; nvidia-smi -rgc "
                "resets a lock), then delete the file"
            ) from None

    def forget(self, path: Path) -> None:
        """Delete the file at `path` and let go of its lock; a file already gone is fine, one
        that cannot be deleted is logged (the next run then restores a limit that is already
        right)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            _log.warning("could not delete GPU state file %s: %s", path, err.strerror)
        self._unlock(path)


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + _LOCK_SUFFIX)


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # The rename itself must reach the disk before the limit changes.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time after boot in clock ticks (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
