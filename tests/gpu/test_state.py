"""Limits as found, and clock locks, on disk: written before the first change, deleted once
restored, and restored first by the next run when a process died holding a cap or a lock
(real processes, GPUs over loopback HTTP)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from jouletune.gpu import (
    GpuError,
    LimitStore,
    PowerLimits,
    clock_lock,
    default_state_dir,
    held_power_limits,
    open_sim_gpus,
    power_limit,
    restore_left_limits,
)
from tests.gpu.fake_sim import FakeSimState, fake_sim_server
from tests.procs import free_port

ROOT = Path(__file__).resolve().parents[2]

# A process that caps GPU 0 of a GPU server through a store, says so, and waits to be killed.
_HOLDER = """
import sys
from pathlib import Path
from jouletune.gpu import LimitStore, held_power_limits, open_sim_gpus
url, state_dir = sys.argv[1], sys.argv[2]
gpus = open_sim_gpus(url, selection=[0])
with held_power_limits(store=LimitStore(Path(state_dir))) as limits:
    limits.apply(gpus, 300.0)
    print("capped", flush=True)
    sys.stdin.read()  # until the test kills us
"""


@contextmanager
def _holder(url: str, state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A real process holding GPU 0 at 300 W; yields once it has capped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "capped\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _killed_holder(url: str, state_dir: Path) -> int:
    """Cap GPU 0 in a real process and SIGKILL it mid-hold; its pid."""
    with _holder(url, state_dir) as proc:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        return proc.pid


def _files(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob("*.json"))  # records; their lock files stay (_state)


def test_the_limit_as_found_is_on_disk_while_capped_and_gone_after(tmp_path: Path) -> None:
    state = FakeSimState(num_gpus=2, limits_w=[650.0, 700.0])
    store = LimitStore(tmp_path / "state")
    with fake_sim_server(state) as url:
        gpus = open_sim_gpus(url)
        with power_limit(gpus, 300.0, store=store):
            (first, second) = _files(store.directory)
            records = [json.loads(p.read_text()) for p in (first, second)]
        after = _files(store.directory)
    assert state.puts == [(0, 300.0), (1, 300.0), (1, 700.0), (0, 650.0)]
    assert {r["uuid"]: r["original_w"] for r in records} == {
        "GPU-fake-0": 650.0,
        "GPU-fake-1": 700.0,
    }
    for record in records:
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["address"] == f"{url}/sim/gpus"
    assert first.name.startswith("GPU-fake-0@") and first.suffix == ".json"
    assert after == [], "deleted once restored, no temporary file left"


def test_a_gpu_left_at_the_asked_limit_is_not_written_nor_recorded(tmp_path: Path) -> None:
    state = FakeSimState(num_gpus=1, limits_w=[300.0])
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url, power_limit(open_sim_gpus(url), 300.0, store=store):
        assert _files(tmp_path) == []
    assert state.puts == []


def test_after_sigkill_the_next_run_restores_the_limit_first_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = FakeSimState(num_gpus=2)
    store = LimitStore(tmp_path / "state")
    with fake_sim_server(state) as url:
        pid = _killed_holder(url, store.directory)
        assert state.limits_w == [300.0, 700.0], "the GPU outlived the process, capped"
        (left,) = _files(store.directory)
        assert json.loads(left.read_text())["pid"] == pid
        with caplog.at_level("WARNING"):
            (restored,) = restore_left_limits(store)
    assert state.limits_w == [700.0, 700.0] and state.puts[-1] == (0, 700.0)
    assert (restored.record.uuid, restored.record.original_w, restored.left_w) == (
        "GPU-fake-0",
        700.0,
        300.0,
    )
    assert (
        f"restored GPU 0 (GPU-fake-0) power limit to 700 W from 300 W, left changed by "
        f"jouletune pid {pid} on host {socket.gethostname()}"
    ) in caplog.text
    assert _files(store.directory) == []
    assert restore_left_limits(store) == [], "nothing twice"


def test_a_run_that_caps_a_gpu_a_dead_run_left_capped_takes_the_records_limit(
    tmp_path: Path,
) -> None:
    state = FakeSimState(num_gpus=1)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url:
        _killed_holder(url, tmp_path)
        puts_before = len(state.puts)
        with power_limit(open_sim_gpus(url), 400.0, store=store):
            (record,) = [json.loads(p.read_text()) for p in _files(tmp_path)]
    # Back to 700 (the record's), then capped, then restored to 700, not to the left 300.
    assert state.puts[puts_before:] == [(0, 700.0), (0, 400.0), (0, 700.0)]
    assert record["original_w"] == 700.0 and record["pid"] == os.getpid()
    assert _files(tmp_path) == []


def test_a_cap_held_by_a_live_process_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = FakeSimState(num_gpus=1)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url, _holder(url, tmp_path) as proc:
        with caplog.at_level("WARNING"):
            assert restore_left_limits(store) == []
        assert f"held by a running jouletune pid {proc.pid}" in caplog.text
        gpus = open_sim_gpus(url)
        held = rf"GPU 0 \(GPU-fake-0\) power limit is held by a running jouletune pid {proc.pid}"
        with pytest.raises(GpuError, match=held):
            restore_left_limits(store, gpus)
        with pytest.raises(GpuError, match="stop it first"), power_limit(gpus, 400.0, store=store):
            pass
        assert state.limits_w == [300.0] and len(_files(tmp_path)) == 1
        proc.terminate()  # SIGTERM: the holder restores and deletes its record itself
        assert proc.wait(10) == -signal.SIGTERM
    assert state.limits_w == [700.0] and _files(tmp_path) == []


def test_a_live_holder_in_another_pod_is_told_by_its_lock_not_its_host(tmp_path: Path) -> None:
    # Pods of one node share the state directory but not their hostname or pid namespace: the
    # holder's record names a host (and a pid) this process cannot check; its lock tells.
    state = FakeSimState(num_gpus=1)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url, _holder(url, tmp_path) as proc:
        (path,) = _files(tmp_path)
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "host": "other-pod", "pid": 1}))
        assert restore_left_limits(store) == []
        with pytest.raises(GpuError, match="held by a running jouletune pid 1 on host other-pod"):
            restore_left_limits(store, open_sim_gpus(url))
        assert state.limits_w == [300.0] and _files(tmp_path) == [path]
        proc.kill()  # the kernel drops its lock: now it is a dead run's record
        proc.wait(10)
        (restored,) = restore_left_limits(store)
    assert restored.record.host == "other-pod" and state.limits_w == [700.0]
    assert _files(tmp_path) == []


def test_nested_holders_in_one_process_keep_one_record_with_the_first_limit(
    tmp_path: Path,
) -> None:
    state = FakeSimState(num_gpus=1)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url:
        gpus = open_sim_gpus(url)
        with held_power_limits(store=store) as outer:
            outer.apply(gpus, 400.0)
            with power_limit(gpus, 300.0, store=store):
                inner = [json.loads(p.read_text())["original_w"] for p in _files(tmp_path)]
            between = [json.loads(p.read_text())["original_w"] for p in _files(tmp_path)]
            assert state.limits_w == [400.0]
        assert state.limits_w == [700.0]
    assert inner == between == [700.0]
    assert _files(tmp_path) == []


def test_an_unwritable_state_dir_refuses_the_change_before_it_happens(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    state = FakeSimState(num_gpus=1)
    with fake_sim_server(state) as url:
        limits = PowerLimits(store=LimitStore(blocker / "state"))
        with pytest.raises(GpuError, match=r"cannot write the power-limit state file .* capped"):
            limits.apply(open_sim_gpus(url), 300.0)
    assert state.puts == []


def test_a_record_whose_simulated_gpu_is_gone_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LimitStore(tmp_path)
    with fake_sim_server(FakeSimState(num_gpus=1), port=free_port()) as url:
        _killed_holder(url, tmp_path)
    with caplog.at_level("WARNING"):
        assert restore_left_limits(store) == []
    assert f"at {url}/sim/gpus is gone" in caplog.text
    assert _files(tmp_path) == []


def test_an_unreadable_record_stops_a_change_of_its_gpu(tmp_path: Path) -> None:
    state = FakeSimState(num_gpus=1)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url:
        gpus = open_sim_gpus(url)
        store.path(f"{url}/sim/gpus", "GPU-fake-0").write_text("{not json")
        with pytest.raises(GpuError, match=r"is unreadable .* then delete the file"):
            PowerLimits(store=store).apply(gpus, 300.0)
    assert state.puts == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"JOULETUNE_STATE_DIR": "/s", "XDG_STATE_HOME": "/x"}, "/s"),
        ({"XDG_STATE_HOME": "/x"}, "/x/jouletune"),
    ],
)
def test_default_state_dir(env: dict[str, str], expected: str) -> None:
    assert default_state_dir(env) == Path(expected)


def test_default_state_dir_without_variables() -> None:
    expected = (
        Path("/var/lib/jouletune")
        if os.geteuid() == 0
        else Path.home() / ".local" / "state" / "jouletune"
    )
    assert default_state_dir({}) == expected


# --- SM clock locks: a record that jouletune locked the GPU ------------------------------------

# A process that locks GPU 0's SM clock (and caps GPU 1) through a store, and waits.
_LOCKER = """
import sys
from pathlib import Path
from jouletune.gpu import LimitStore, held_clock_locks, held_power_limits, open_sim_gpus
url, state_dir = sys.argv[1], sys.argv[2]
gpus = open_sim_gpus(url)
store = LimitStore(Path(state_dir))
with held_power_limits(store=store) as limits, held_clock_locks(store=store) as locks:
    locks.apply(gpus[:1], 1200)
    limits.apply(gpus[1:], 400.0)
    print("capped", flush=True)
    sys.stdin.read()
"""


def _killed_locker(url: str, state_dir: Path) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, url, str(state_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "capped\n"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid


def test_a_lock_is_on_disk_while_held_and_gone_after(tmp_path: Path) -> None:
    state = FakeSimState(num_gpus=1)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url, clock_lock(open_sim_gpus(url), 1410, store=store):
        (path,) = _files(tmp_path)
        record = json.loads(path.read_text())
    assert path.name.startswith("GPU-fake-0@") and path.name.endswith(".sm-clock-lock.json")
    assert record["setting"] == "sm_clock_lock" and record["original_w"] is None
    # What was read first: the clock and the highest supported clock, for the reader.
    assert (record["found_sm_clock_mhz"], record["max_sm_clock_mhz"]) == (1980.0, 1980)
    assert state.lock_puts == [(0, 1410), (0, None)]
    assert _files(tmp_path) == []


def test_after_sigkill_the_next_run_resets_the_lock_and_restores_the_cap_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = FakeSimState(num_gpus=2)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url:
        pid = _killed_locker(url, tmp_path)
        assert state.locks_mhz == [1200, None] and state.limits_w == [700.0, 400.0]
        assert len(_files(tmp_path)) == 2
        with caplog.at_level("WARNING"):
            restored = restore_left_limits(store)
    assert state.locks_mhz == [None, None] and state.limits_w == [700.0, 700.0]
    assert sorted(r.record.setting for r in restored) == ["power_limit", "sm_clock_lock"]
    who = f"jouletune pid {pid} on host {socket.gethostname()}"
    assert f"reset GPU 0 (GPU-fake-0) SM clock lock, left locked by {who}" in caplog.text
    assert "restored GPU 1 (GPU-fake-1) power limit to 700 W from 400 W" in caplog.text
    assert _files(tmp_path) == []


def test_locking_a_gpu_a_dead_run_left_locked_resets_it_first(tmp_path: Path) -> None:
    state = FakeSimState(num_gpus=2)
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url:
        _killed_locker(url, tmp_path)
        gpus = open_sim_gpus(url)
        before = len(state.lock_puts)
        with clock_lock(gpus[:1], 990, store=store):
            (mine,) = [json.loads(p.read_text()) for p in _files(tmp_path) if "sm-clock" in p.name]
        # The power file of GPU 1 belongs to GPU 1: a lock of GPU 0 leaves it for later.
        assert [p.name.startswith("GPU-fake-1@") for p in _files(tmp_path)] == [True]
    assert state.lock_puts[before:] == [(0, None), (0, 990), (0, None)]
    assert mine["pid"] == os.getpid()


def test_a_power_limit_file_written_before_clock_locks_existed_still_restores(
    tmp_path: Path,
) -> None:
    state = FakeSimState(num_gpus=1, limits_w=[300.0])
    store = LimitStore(tmp_path)
    with fake_sim_server(state) as url:
        old: dict[str, Any] = {  # a file jouletune wrote before it knew clock locks
            "uuid": "GPU-fake-0", "address": f"{url}/sim/gpus", "index": 0,
            "name": "Simulated H100", "original_w": 650.0, "pid": 1, "host": "gone",
            "boot_id": None, "pid_start_ticks": None, "written_unix_s": 0.0,
        }  # fmt: skip
        store.path(old["address"], "GPU-fake-0").write_text(json.dumps(old))
        (restored,) = restore_left_limits(store)
    assert restored.record.setting == "power_limit" and state.limits_w == [650.0]
    assert _files(tmp_path) == []
