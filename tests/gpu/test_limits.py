"""power_limit() and clock_lock(): validate, write only changes, and restore on exit, exception
and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jouletune.gpu import (
    GpuError,
    GpuSample,
    PowerLimitRange,
    PowerLimits,
    SmClockRange,
    clock_lock,
    held_clock_locks,
    held_power_limits,
    power_limit,
)
from tests.gpu.fake_sim import FakeSimState, fake_sim_server

ROOT = Path(__file__).resolve().parents[2]


class FakeGpu:
    """An in-memory Gpu whose limit and lock writes are recorded."""

    def __init__(self, index: int, limit_w: float = 700.0, fail_writes: bool = False) -> None:
        self.index = index
        self.uuid = f"GPU-{index}"
        self.name = "Fake"
        self.limit_w = limit_w
        self.writes: list[float] = []
        self.lock_mhz: int | None = None
        self.lock_writes: list[int | None] = []
        self.fail_writes = fail_writes

    def sample(self) -> GpuSample:
        return GpuSample(
            index=self.index, uuid=self.uuid, name=self.name, energy_j=0.0, power_w=100.0,
            power_limit_w=self.limit_w, sm_clock_hz=None, utilization_ratio=None,
            memory_used_bytes=0, memory_total_bytes=0, temperature_c=None, timestamp_s=0.0,
        )  # fmt: skip

    def power_limit_range(self) -> PowerLimitRange:
        return PowerLimitRange(min_w=200.0, max_w=700.0, default_w=700.0)

    def set_power_limit_w(self, watts: float) -> None:
        if self.fail_writes and watts != 300.0:
            raise GpuError(f"GPU {self.index} refused")
        self.writes.append(watts)
        self.limit_w = watts

    def sm_clock_range(self) -> SmClockRange:
        return SmClockRange(min_mhz=345, max_mhz=1980)

    def set_sm_clock_lock_mhz(self, mhz: int | None) -> None:
        if self.fail_writes and mhz is None:
            raise GpuError(f"GPU {self.index} refused to reset its clocks")
        self.lock_writes.append(mhz)
        self.lock_mhz = mhz


def test_none_changes_nothing() -> None:
    gpu = FakeGpu(0)
    with power_limit([gpu], None):
        assert gpu.limit_w == 700.0
    assert gpu.writes == []


def test_sets_for_the_block_and_restores_the_value_read_at_start() -> None:
    gpus = [FakeGpu(0, limit_w=650.0), FakeGpu(1, limit_w=500.0)]
    with power_limit(gpus, 300):
        assert [g.limit_w for g in gpus] == [300.0, 300.0]
    assert [g.limit_w for g in gpus] == [650.0, 500.0]
    assert [g.writes for g in gpus] == [[300.0, 650.0], [300.0, 500.0]]


def test_a_gpu_already_at_the_limit_is_not_written() -> None:
    at_limit, other = FakeGpu(0, limit_w=300.0), FakeGpu(1)
    with power_limit([at_limit, other], 300):
        pass
    assert at_limit.writes == []
    assert other.writes == [300.0, 700.0]


def test_restores_on_exception() -> None:
    gpu = FakeGpu(0)
    with pytest.raises(KeyError), power_limit([gpu], 250):
        raise KeyError("boom")
    assert gpu.limit_w == 700.0


def test_out_of_range_is_a_clear_value_error_and_writes_nothing() -> None:
    gpu = FakeGpu(0)
    with (
        pytest.raises(ValueError, match=r"150 W is outside GPU 0 .*200-700 W"),
        power_limit([gpu], 150),
    ):
        pass
    assert gpu.writes == []


def test_every_gpu_is_restored_even_when_one_restore_fails() -> None:
    failing, good = FakeGpu(0, fail_writes=True), FakeGpu(1)
    with pytest.raises(GpuError, match="GPU 0 refused"), power_limit([failing, good], 300):
        pass
    assert good.limit_w == 700.0


def test_a_restore_that_fails_unexpectedly_still_restores_the_others_and_says_which() -> None:
    class CutShort(FakeGpu):  # e.g. a GPU server whose reply was cut short
        def set_power_limit_w(self, watts: float) -> None:
            if watts == 700.0:
                raise RuntimeError("reply cut short")
            super().set_power_limit_w(watts)

    broken, good = CutShort(0), FakeGpu(1)
    with (
        pytest.raises(GpuError, match="GPU 0 power limit NOT restored: RuntimeError"),
        power_limit([good, broken], 300),
    ):
        pass
    assert good.limit_w == 700.0


class _SigtermDuringWrite(FakeGpu):
    """Stands in for SIGTERM arriving while a cap is on its way: the handler puts everything
    back (`close`) before the interrupted write lands."""

    limits: PowerLimits

    def set_power_limit_w(self, watts: float) -> None:
        if watts == 300.0:
            self.limits.close("SIGTERM")
        super().set_power_limit_w(watts)


def test_a_cap_that_lands_after_sigterm_restored_is_put_back_and_no_more_are_made() -> None:
    gpu = _SigtermDuringWrite(0)
    with held_power_limits() as limits:
        gpu.limits = limits
        with pytest.raises(GpuError, match=r"GPU 0 power limit left as found: .* on SIGTERM"):
            limits.apply([gpu], 300.0)
        assert gpu.limit_w == 700.0
        with pytest.raises(GpuError, match="left as found"):
            limits.apply([gpu], 400.0)
    # The handler's restore, the cap that landed after it, and the cap put back again.
    assert gpu.writes == [700.0, 300.0, 700.0]


def test_nested_blocks_restore_in_order() -> None:
    gpu = FakeGpu(0)
    with power_limit([gpu], 500):
        with power_limit([gpu], 300):
            assert gpu.limit_w == 300.0
        assert gpu.limit_w == 500.0
    assert gpu.limit_w == 700.0


def test_sigterm_handler_is_put_back_after_the_block() -> None:
    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not expected to run")

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with power_limit([FakeGpu(0)], 300):
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


_NVML_CHILD = """
    import signal, sys
    from tests.gpu.nvml_fake import fake_nvml
    from jouletune.gpu import open_nvml_gpus, power_limit
    if sys.argv[1] == "handler":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(7))
    with fake_nvml() as nvml:
        nvml.nvmlDeviceSetPowerManagementLimit.side_effect = (
            lambda handle, mw: print("set", handle, mw, flush=True)
        )
        with power_limit(open_nvml_gpus(), 300):
            print("capped", flush=True)
            signal.pause()
"""


def _run_until_capped(script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # ends at EOF if the child dies early
        lines.append(line)
        if line.strip() == "capped":
            return proc
    proc.wait(10)
    raise AssertionError(f"child exited {proc.returncode} before capping:\n{''.join(lines)}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mode", "exit_code"), [("default", -signal.SIGTERM), ("handler", 7)])
def test_sigterm_in_a_real_process_restores_nvml_limits(mode: str, exit_code: int) -> None:
    proc = _run_until_capped(_NVML_CHILD, mode)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    # Exactly one restore per GPU, in reverse order, then the signal's usual outcome.
    assert out.splitlines() == ["set handle1 700000", "set handle0 700000"]
    assert proc.returncode == exit_code


_SIM_CHILD = """
    import signal, sys
    from jouletune.gpu import open_sim_gpus, power_limit
    with power_limit(open_sim_gpus(sys.argv[1]), 300):
        print("capped", flush=True)
        signal.pause()
"""


@pytest.mark.timeout(60)
def test_sigterm_in_a_real_process_restores_sim_server_limits() -> None:
    state = FakeSimState(num_gpus=2, limits_w=[700.0, 450.0])
    with fake_sim_server(state) as url:
        proc = _run_until_capped(_SIM_CHILD, url)
        assert state.limits_w == [300.0, 300.0]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert state.limits_w == [700.0, 450.0]
    assert state.puts == [(0, 300.0), (1, 300.0), (1, 450.0), (0, 700.0)]


# --- clock_lock(): the same guarantees for SM clock locks ------------------------------------


def test_a_lock_holds_for_the_block_and_is_reset_after() -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    with clock_lock(gpus, 1410):
        assert [g.lock_mhz for g in gpus] == [1410, 1410]
    assert [g.lock_writes for g in gpus] == [[1410, None], [1410, None]]
    with clock_lock(gpus, None):
        pass
    assert [g.lock_writes for g in gpus] == [[1410, None], [1410, None]], "None changes nothing"


def test_a_lock_is_reset_on_exception_and_refused_out_of_range() -> None:
    gpu = FakeGpu(0)
    with pytest.raises(KeyError), clock_lock([gpu], 1200):
        raise KeyError("boom")
    assert gpu.lock_writes == [1200, None]
    bad = pytest.raises(ValueError, match=r"2100 MHz is outside GPU 0 \(Fake\)'s .* 345-1980 MHz")
    with bad, clock_lock([gpu], 2100):
        pass
    assert gpu.lock_writes == [1200, None], "nothing written"


def test_locks_step_without_rewrites_and_reset_once() -> None:
    gpu = FakeGpu(0)
    with held_clock_locks() as locks:
        locks.apply([gpu], 1410)
        locks.apply([gpu], 1410)  # the lock it holds: not written again
        locks.apply([gpu], 1200)
        locks.apply([gpu], None)  # back as found: reset
        locks.apply([gpu], 990)
    assert gpu.lock_writes == [1410, 1200, None, 990, None]


def test_every_lock_is_reset_even_when_one_reset_fails() -> None:
    failing, good = FakeGpu(0, fail_writes=True), FakeGpu(1)
    refused = pytest.raises(GpuError, match="GPU 0 refused to reset")
    with refused, clock_lock([failing, good], 1200):
        pass
    assert good.lock_mhz is None and failing.lock_mhz == 1200


def test_a_cap_and_a_lock_nest_and_each_is_put_back() -> None:
    gpu = FakeGpu(0)
    with power_limit([gpu], 400), clock_lock([gpu], 1200):
        assert (gpu.limit_w, gpu.lock_mhz) == (400.0, 1200)
    assert (gpu.limit_w, gpu.lock_mhz) == (700.0, None)


_LOCK_CHILD = """
    import signal, sys
    from jouletune.gpu import clock_lock, open_sim_gpus, power_limit
    gpus = open_sim_gpus(sys.argv[1])
    with power_limit(gpus, 300), clock_lock(gpus, 1200):
        print("capped", flush=True)
        signal.pause()
"""


@pytest.mark.timeout(60)
def test_sigterm_in_a_real_process_resets_locks_and_restores_limits() -> None:
    state = FakeSimState(num_gpus=2)
    with fake_sim_server(state) as url:
        proc = _run_until_capped(_LOCK_CHILD, url)
        assert state.locks_mhz == [1200, 1200] and state.limits_w == [300.0, 300.0]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert state.locks_mhz == [None, None] and state.limits_w == [700.0, 700.0]
    # The inner block (the lock) is undone first, then the cap, each GPU in reverse order.
    assert state.lock_puts == [(0, 1200), (1, 1200), (1, None), (0, None)]
