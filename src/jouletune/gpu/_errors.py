"""jouletune's GPU exceptions; NVML's error codes are mapped onto them in `_nvml.py`."""

from __future__ import annotations

__all__ = ["GpuError", "GpuPermissionError", "NvmlUnavailableError"]


class GpuError(RuntimeError):
    """A GPU could not be read or changed; the message is one line that says why."""


class NvmlUnavailableError(GpuError):
    """NVML cannot be used here: no NVIDIA driver, no `libnvidia-ml.so.1`, or no GPU."""


class GpuPermissionError(GpuError):
    """The operation needs privileges this process lacks (root or CAP_SYS_ADMIN)."""
