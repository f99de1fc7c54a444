"""NvmlGpu against a fake pynvml: unit conversion, error mapping, degraded GPUs, clock locks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pynvml
import pytest

from jouletune.gpu import (
    GpuError,
    GpuPermissionError,
    LimitStore,
    NvmlUnavailableError,
    PowerLimitRange,
    SmClockRange,
    clock_lock,
    nvml_versions,
    open_nvml_gpus,
    power_limit,
    sample_all,
)
from tests.gpu.nvml_fake import GIB, fake_nvml, nvml_error


def test_sample_converts_nvml_units_once() -> None:
    with fake_nvml() as nvml:
        gpu = open_nvml_gpus([1])[0]
        sample = gpu.sample()
    nvml.nvmlDeviceGetTotalEnergyConsumption.assert_called_with("handle1")
    assert (sample.index, sample.uuid, sample.name) == (1, "GPU-handle1", "NVIDIA H100 80GB HBM3")
    assert sample.energy_j == pytest.approx(123_456.789)  # mJ -> J
    assert sample.power_w == pytest.approx(350.5)  # mW -> W
    assert sample.power_limit_w == pytest.approx(700.0)
    assert sample.sm_clock_hz == pytest.approx(1.98e9)  # MHz -> Hz
    assert sample.utilization_ratio == pytest.approx(0.87)  # % -> ratio
    assert sample.memory_used_bytes == 3 * GIB
    assert sample.memory_total_bytes == 80 * GIB
    assert sample.temperature_c == 45.0
    assert sample.energy_estimated is False
    assert abs(sample.timestamp_s - time.time()) < 5


def test_open_all_gpus_by_default() -> None:
    with fake_nvml(num_gpus=3):
        gpus = open_nvml_gpus()
    assert [g.index for g in gpus] == [0, 1, 2]
    assert [g.uuid for g in gpus] == ["GPU-handle0", "GPU-handle1", "GPU-handle2"]


def test_open_by_uuid_keeps_the_hosts_indices() -> None:
    with fake_nvml(num_gpus=3):
        gpus = open_nvml_gpus(["GPU-handle2", "GPU-handle0"])
    assert [(g.index, g.uuid) for g in gpus] == [(2, "GPU-handle2"), (0, "GPU-handle0")]


def test_open_unknown_index_is_a_value_error() -> None:
    with fake_nvml(num_gpus=2), pytest.raises(ValueError, match=r"no GPU \[5\] on this host"):
        open_nvml_gpus([0, 5])


def test_no_gpu_is_nvml_unavailable() -> None:
    with fake_nvml(num_gpus=0), pytest.raises(NvmlUnavailableError, match="no GPU"):
        open_nvml_gpus()


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
)
def test_missing_driver_is_one_line_nvml_unavailable(code: int) -> None:
    with fake_nvml() as nvml:
        nvml.nvmlInit.side_effect = nvml_error(code)
        with pytest.raises(NvmlUnavailableError) as info:
            open_nvml_gpus()
    message = str(info.value)
    assert "\n" not in message
    assert "driver" in message
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


def test_no_permission_says_root_or_cap_sys_admin() -> None:
    with fake_nvml() as nvml:
        gpu = open_nvml_gpus([0])[0]
        nvml.nvmlDeviceSetPowerManagementLimit.side_effect = nvml_error(
            pynvml.NVML_ERROR_NO_PERMISSION
        )
        with pytest.raises(GpuPermissionError, match="root or CAP_SYS_ADMIN") as info:
            gpu.set_power_limit_w(300)
    assert "\n" not in str(info.value)


def test_other_nvml_errors_are_gpu_errors() -> None:
    with fake_nvml() as nvml:
        gpu = open_nvml_gpus([0])[0]
        nvml.nvmlDeviceGetPowerUsage.side_effect = nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        with pytest.raises(GpuError, match="reading GPU 0") as info:
            gpu.sample()
    assert type(info.value) is GpuError


def test_set_power_limit_writes_integer_milliwatts() -> None:
    with fake_nvml() as nvml:
        gpu = open_nvml_gpus([0])[0]
        gpu.set_power_limit_w(312.5)
    nvml.nvmlDeviceSetPowerManagementLimit.assert_called_once_with("handle0", 312_500)


def test_power_limit_range_in_watts() -> None:
    with fake_nvml():
        rng = open_nvml_gpus([0])[0].power_limit_range()
    assert rng == PowerLimitRange(min_w=200.0, max_w=700.0, default_w=700.0)


def test_unsupported_readings_are_none_not_zero() -> None:
    unsupported = nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    with fake_nvml() as nvml:
        nvml.nvmlDeviceGetClockInfo.side_effect = unsupported
        nvml.nvmlDeviceGetUtilizationRates.side_effect = unsupported
        nvml.nvmlDeviceGetTemperature.side_effect = unsupported
        nvml.nvmlDeviceGetPowerManagementLimit.side_effect = unsupported
        sample = open_nvml_gpus([0])[0].sample()
    assert sample.sm_clock_hz is None
    assert sample.utilization_ratio is None
    assert sample.temperature_c is None
    assert sample.power_limit_w is None
    assert sample.energy_j == pytest.approx(123_456.789)


def test_gpu_without_energy_counter_integrates_power_and_says_so() -> None:
    with fake_nvml() as nvml:
        nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = nvml_error(
            pynvml.NVML_ERROR_NOT_SUPPORTED
        )
        nvml.nvmlDeviceGetPowerUsage.return_value = 100_000  # 100 W
        gpu = open_nvml_gpus([0])[0]
        try:
            first = gpu.sample()
            # Poll (no fixed sleep) until the integrator has covered at least 0.3 s.
            deadline = time.monotonic() + 10
            last = gpu.sample()
            while last.energy_j - first.energy_j < 30 and time.monotonic() < deadline:
                last = gpu.sample()
            elapsed_s = last.timestamp_s - first.timestamp_s
        finally:
            gpu.close()
    assert gpu.energy_estimated
    assert first.energy_estimated and last.energy_estimated
    assert last.energy_j - first.energy_j == pytest.approx(100.0 * elapsed_s, rel=0.05)


def test_gpu_without_energy_or_power_cannot_be_opened() -> None:
    unsupported = nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    with fake_nvml() as nvml:
        nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = unsupported
        nvml.nvmlDeviceGetPowerUsage.side_effect = unsupported
        with pytest.raises(GpuError, match="neither energy nor power"):
            open_nvml_gpus([0])


def test_nvml_versions() -> None:
    with fake_nvml():
        assert nvml_versions() == {"driver": "580.159.04", "cuda_driver": "13.0"}


def test_power_limit_on_nvml_sets_once_and_restores() -> None:
    with fake_nvml() as nvml:
        gpus = open_nvml_gpus()
        setter = nvml.nvmlDeviceSetPowerManagementLimit
        with power_limit(gpus, 400):
            assert [c.args for c in setter.call_args_list] == [
                ("handle0", 400_000),
                ("handle1", 400_000),
            ]
        assert [c.args for c in setter.call_args_list[2:]] == [
            ("handle1", 700_000),
            ("handle0", 700_000),
        ]


def test_power_limit_on_nvml_restores_on_exception() -> None:
    with fake_nvml() as nvml:
        gpus = open_nvml_gpus([0])
        with pytest.raises(RuntimeError, match="trial failed"), power_limit(gpus, 300):
            raise RuntimeError("trial failed")
    assert nvml.nvmlDeviceSetPowerManagementLimit.call_args.args == ("handle0", 700_000)


def test_power_limit_outside_range_is_rejected_before_any_write() -> None:
    with fake_nvml() as nvml:
        gpus = open_nvml_gpus()
        too_high = pytest.raises(ValueError, match=r"800 W is outside GPU 0 .*200-700 W")
        with too_high, power_limit(gpus, 800):
            pass
    nvml.nvmlDeviceSetPowerManagementLimit.assert_not_called()


def test_sample_all_reads_several_nvml_gpus_in_parallel() -> None:
    # The energy counter read is the slow NVML call (~3 ms on an H100); a barrier that only
    # opens when all three reads are in flight at once proves they overlap.
    barrier = threading.Barrier(3, timeout=10)

    def energy_mj(handle: str) -> int:
        barrier.wait()
        return 1000 * int(handle.removeprefix("handle"))

    with fake_nvml(num_gpus=3) as nvml:
        gpus = open_nvml_gpus()
        nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = energy_mj
        samples = sample_all(gpus)
    assert [(s.index, s.energy_j) for s in samples] == [(0, 0.0), (1, 1.0), (2, 2.0)]


# --- SM clock locks ---------------------------------------------------------------------------


def test_a_clock_lock_pins_min_and_max_at_t_and_none_resets_it() -> None:
    with fake_nvml() as nvml:
        gpu = open_nvml_gpus([1])[0]
        gpu.set_sm_clock_lock_mhz(1410)
        gpu.set_sm_clock_lock_mhz(None)
    nvml.nvmlDeviceSetGpuLockedClocks.assert_called_once_with("handle1", 1410, 1410)
    nvml.nvmlDeviceResetGpuLockedClocks.assert_called_once_with("handle1")


def test_the_clock_range_spans_every_memory_clocks_graphics_clocks_read_once() -> None:
    per_memory_clock = {2619: [1980, 1500, 1005], 1593: [1200, 210]}
    with fake_nvml() as nvml:
        nvml.nvmlDeviceGetSupportedMemoryClocks.return_value = list(per_memory_clock)
        nvml.nvmlDeviceGetSupportedGraphicsClocks.side_effect = lambda handle, mem_mhz: (
            per_memory_clock[mem_mhz]
        )
        gpu = open_nvml_gpus([0])[0]
        first, second = gpu.sm_clock_range(), gpu.sm_clock_range()
    assert first == second == SmClockRange(min_mhz=210, max_mhz=1980)
    assert nvml.nvmlDeviceGetSupportedMemoryClocks.call_count == 1


def test_a_gpu_without_supported_clocks_says_it_cannot_be_locked() -> None:
    with fake_nvml() as nvml:
        nvml.nvmlDeviceGetSupportedGraphicsClocks.return_value = []
        gpu = open_nvml_gpus([0])[0]
        with pytest.raises(GpuError, match=r"^GPU 0 \(NVIDIA H100 80GB HBM3\) lists no supported"):
            gpu.sm_clock_range()
        nvml.nvmlDeviceGetSupportedMemoryClocks.side_effect = nvml_error(
            pynvml.NVML_ERROR_NOT_SUPPORTED
        )
        with pytest.raises(GpuError, match="reading GPU 1's supported clocks") as err:
            open_nvml_gpus([1])[0].sm_clock_range()
    assert "\n" not in str(err.value)


def test_locking_without_permission_says_root_or_cap_sys_admin() -> None:
    with fake_nvml() as nvml:
        gpu = open_nvml_gpus([0])[0]
        nvml.nvmlDeviceSetGpuLockedClocks.side_effect = nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)
        with pytest.raises(GpuPermissionError, match=r"locking GPU 0's SM clock at 1200 MHz"):
            gpu.set_sm_clock_lock_mhz(1200)


def test_clock_lock_on_nvml_records_then_locks_then_resets_and_forgets(tmp_path: Path) -> None:
    store = LimitStore(tmp_path)
    with fake_nvml() as nvml:
        gpus = open_nvml_gpus()
        order: list[str] = []
        nvml.nvmlDeviceSetGpuLockedClocks.side_effect = lambda h, lo, hi: order.append(
            f"lock {h} with {len(list(tmp_path.glob('*.json')))} records"
        )
        with clock_lock(gpus, 1200, store=store):
            records = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
        resets = [c.args for c in nvml.nvmlDeviceResetGpuLockedClocks.call_args_list]
    # Each GPU's record is on disk before its lock; resets go in reverse order.
    assert order == ["lock handle0 with 1 records", "lock handle1 with 2 records"]
    assert resets == [("handle1",), ("handle0",)]
    record = records["GPU-handle0.sm-clock-lock.json"]
    assert (record["setting"], record["original_w"]) == ("sm_clock_lock", None)
    assert (record["found_sm_clock_mhz"], record["max_sm_clock_mhz"]) == (1980.0, 1980)
    assert list(tmp_path.glob("*.json")) == []


def test_a_lock_outside_the_supported_clocks_is_refused_before_any_write() -> None:
    with fake_nvml() as nvml:
        gpus = open_nvml_gpus()
        too_low = pytest.raises(ValueError, match=r"300 MHz is outside GPU 0 .* 345-1980 MHz")
        with too_low, clock_lock(gpus, 300):
            pass
    nvml.nvmlDeviceSetGpuLockedClocks.assert_not_called()
    nvml.nvmlDeviceResetGpuLockedClocks.assert_not_called()
