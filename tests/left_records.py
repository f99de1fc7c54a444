"""A GPU setting a killed run left changed: its record in a state directory, written by a
process that has exited (so no live jouletune holds it)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from jouletune.gpu import GpuSetting, LimitRecord, LimitStore


def leave_record(
    directory: Path,
    *,
    uuid: str,
    address: str,
    name: str,
    setting: GpuSetting,
    original_w: float | None = None,
    max_sm_clock_mhz: int | None = None,
) -> tuple[LimitRecord, Path]:
    """Write GPU 0's `setting` record into `directory` (created) as a dead process's."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    record = LimitRecord(
        uuid=uuid, address=address, index=0, name=name, setting=setting, original_w=original_w,
        max_sm_clock_mhz=max_sm_clock_mhz, pid=int(dead.stdout), host=socket.gethostname(),
        boot_id=None, pid_start_ticks=None, written_unix_s=time.time(),
    )  # fmt: skip
    store = LimitStore(directory)
    store.directory.mkdir(parents=True, exist_ok=True)
    path = store.path(address, uuid, setting)
    path.write_text(json.dumps(record.to_json()))
    return record, path
