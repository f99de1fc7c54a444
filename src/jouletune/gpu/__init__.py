"""jouletune.gpu: read GPUs and change their power limits and SM clock locks, always
restoring them.

Real GPUs come from NVML (`open_nvml_gpus`), a sim-server's GPUs over HTTP (`open_sim_gpus`),
simulated ones from `SimulatedGpu` (the power model in `jouletune.gpu.simulated`). All satisfy
the `Gpu` protocol and produce `GpuSample`s in SI units. `power_limit()` (`PowerLimits`) is
the only way jouletune changes a limit, `clock_lock()` (`ClockLocks`) the only way it locks an
SM clock; with a `LimitStore` the settings as found are on disk while they are changed, and
`restore_left_limits` puts back what a crashed run left; `refuse_left_changed` stops a
read-only run on it instead.
`VisibleDevices` maps CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES to NVML indices: the
GPUs an engine started in this environment uses.
"""

from jouletune.gpu._errors import GpuError, GpuPermissionError, NvmlUnavailableError
from jouletune.gpu._limits import (
    ClockLocks,
    PowerLimits,
    check_clock_lock,
    check_power_limit,
    clock_lock,
    held_clock_locks,
    held_power_limits,
    power_limit,
)
from jouletune.gpu._nvml import NvmlGpu, nvml_versions, open_nvml_gpus
from jouletune.gpu._remote import (
    EXPORTER_GPUS_PATH,
    SIM_GPUS_PATH,
    RemoteGpu,
    gpu_entry,
    open_remote_gpus,
    open_sim_gpus,
    sm_clock_lock_mhz,
)
from jouletune.gpu._restore import Restored, refuse_left_changed, restore_left_limits
from jouletune.gpu._sampling import sample_all
from jouletune.gpu._select import GpuSelector, parse_selection, read_gpu_list
from jouletune.gpu._state import (
    STATE_DIR_ENV,
    GpuSetting,
    LimitRecord,
    LimitStore,
    default_state_dir,
)
from jouletune.gpu._types import Gpu, GpuSample, PowerLimitRange, SmClockRange
from jouletune.gpu._visible import VisibleDevices
from jouletune.gpu.simulated import SimulatedGpu

__all__ = [
    "EXPORTER_GPUS_PATH",
    "SIM_GPUS_PATH",
    "STATE_DIR_ENV",
    "ClockLocks",
    "Gpu",
    "GpuError",
    "GpuPermissionError",
    "GpuSample",
    "GpuSelector",
    "GpuSetting",
    "LimitRecord",
    "LimitStore",
    "NvmlGpu",
    "NvmlUnavailableError",
    "PowerLimitRange",
    "PowerLimits",
    "RemoteGpu",
    "Restored",
    "SimulatedGpu",
    "SmClockRange",
    "VisibleDevices",
    "check_clock_lock",
    "check_power_limit",
    "clock_lock",
    "default_state_dir",
    "gpu_entry",
    "held_clock_locks",
    "held_power_limits",
    "nvml_versions",
    "open_nvml_gpus",
    "open_remote_gpus",
    "open_sim_gpus",
    "parse_selection",
    "power_limit",
    "read_gpu_list",
    "refuse_left_changed",
    "restore_left_limits",
    "sample_all",
    "sm_clock_lock_mhz",
]
