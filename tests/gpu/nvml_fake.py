"""A fake `pynvml` for tests: `unittest.mock.patch(..., autospec=True)` with H100-like values.

Autospec keeps the fake honest: a call with the wrong arguments fails as it would on a real
GPU. Error codes and the NVMLError class stay the real ones (`jouletune.gpu._nvml` captures
them at import), so tests raise `pynvml.NVMLError(code)` exactly as NVML would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pynvml

GIB = 1 << 30


def nvml_error(code: int) -> pynvml.NVMLError:
    """The exception pynvml raises for `code`."""
    return pynvml.NVMLError(code)


@contextmanager
def fake_nvml(num_gpus: int = 2) -> Iterator[Any]:
    """Patch pynvml as `jouletune.gpu._nvml` sees it; yields the mock to adjust per test."""
    with mock.patch("jouletune.gpu._nvml.pynvml", autospec=True) as nvml:
        nvml.nvmlDeviceGetCount.return_value = num_gpus
        nvml.nvmlDeviceGetHandleByIndex.side_effect = lambda i: f"handle{i}"
        nvml.nvmlDeviceGetUUID.side_effect = lambda h: f"GPU-{h}"
        nvml.nvmlDeviceGetName.return_value = "NVIDIA H100 80GB HBM3"
        nvml.nvmlDeviceGetMemoryInfo.return_value = SimpleNamespace(
            total=80 * GIB, used=3 * GIB, free=77 * GIB
        )
        nvml.nvmlDeviceGetTotalEnergyConsumption.return_value = 123_456_789  # mJ
        nvml.nvmlDeviceGetPowerUsage.return_value = 350_500  # mW
        nvml.nvmlDeviceGetPowerManagementLimit.return_value = 700_000  # mW
        nvml.nvmlDeviceGetPowerManagementLimitConstraints.return_value = (200_000, 700_000)
        nvml.nvmlDeviceGetPowerManagementDefaultLimit.return_value = 700_000
        nvml.nvmlDeviceGetClockInfo.return_value = 1980  # MHz
        # An H100 SXM: one HBM3 clock, graphics clocks 1980 down to 345 MHz in 15 MHz steps.
        nvml.nvmlDeviceGetSupportedMemoryClocks.return_value = [2619]
        nvml.nvmlDeviceGetSupportedGraphicsClocks.return_value = list(range(1980, 344, -15))
        nvml.nvmlDeviceGetUtilizationRates.return_value = SimpleNamespace(gpu=87, memory=40)
        nvml.nvmlDeviceGetTemperature.return_value = 45
        nvml.nvmlSystemGetDriverVersion.return_value = "580.159.04"
        nvml.nvmlSystemGetCudaDriverVersion.return_value = 13000
        yield nvml
