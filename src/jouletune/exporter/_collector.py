"""The Prometheus collector: reads the GPUs inside `collect()`, once per scrape.

Nothing is registered at import; callers pass the registry (`registry.register(collector)`),
and every scrape builds fresh metric families, as prometheus_client's custom-collector guide
does. Metric names and labels are the contract (jouletune.contract, docs/contract.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from jouletune.contract import (
    EXPORTER_INFO,
    GPU_ENERGY,
    GPU_ENERGY_ESTIMATED,
    GPU_LABELS,
    GPU_MEMORY_USED,
    GPU_POWER,
    GPU_POWER_LIMIT,
    GPU_SM_CLOCK,
    GPU_TEMPERATURE,
    GPU_UTILIZATION,
)
from jouletune.gpu import GpuSample

__all__ = ["GpuCollector"]


@dataclass(frozen=True)
class _Gauge:
    name: str
    doc: str
    unit: str
    value: Callable[[GpuSample], float | None]


_ENERGY_NAME = GPU_ENERGY.removesuffix("_total")  # prometheus_client adds the suffix
_ENERGY_DOC = (
    "Energy the GPU consumed, joules (NVML total-energy counter; take differences between scrapes)"
)
_GAUGES: tuple[_Gauge, ...] = (
    _Gauge(GPU_POWER, "GPU power draw as NVML reports it, watts", "watts",
           lambda s: s.power_w),
    _Gauge(GPU_POWER_LIMIT, "GPU power-management limit, watts", "watts",
           lambda s: s.power_limit_w),
    _Gauge(GPU_SM_CLOCK, "GPU SM clock, hertz", "hertz",
           lambda s: s.sm_clock_hz),
    _Gauge(GPU_UTILIZATION,
           "Fraction of the last sample period in which a kernel ran on the GPU (0-1)", "ratio",
           lambda s: s.utilization_ratio),
    _Gauge(GPU_MEMORY_USED, "GPU memory in use, bytes", "bytes",
           lambda s: float(s.memory_used_bytes)),
    _Gauge(GPU_TEMPERATURE, "GPU temperature, degrees Celsius", "celsius",
           lambda s: s.temperature_c),
    _Gauge(GPU_ENERGY_ESTIMATED,
           "1 when the GPU has no energy counter and the energy counter integrates sampled "
           "power instead (less accurate), else 0", "",
           lambda s: 1.0 if s.energy_estimated else 0.0),
)  # fmt: skip


class GpuCollector(Collector):
    """Exposes one series per GPU for each jouletune GPU metric.

    Args:
        read: returns a fresh `GpuSample` of every exported GPU; called once per scrape. Its
            `GpuError` propagates, so a scrape fails loudly instead of serving stale values.
        pod: value of the `pod` label (the Kubernetes downward API's POD_NAME), if known.
        namespace: value of the `namespace` label (POD_NAMESPACE), if known.
        info: labels of `jouletune_exporter_info` (`source`, `driver_version`), which say
            whether the GPUs are real or simulated and which driver read them.
    """

    def __init__(
        self,
        *,
        read: Callable[[], Sequence[GpuSample]],
        pod: str | None = None,
        namespace: str | None = None,
        info: Mapping[str, str] | None = None,
    ) -> None:
        self._read = read
        self._info = dict(info or {})
        self._extra: dict[str, str] = {}
        if pod:
            self._extra["pod"] = pod
        if namespace:
            self._extra["namespace"] = namespace
        self._label_names = [*GPU_LABELS, *self._extra]

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples, so registering reads no GPU."""
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        """Read every GPU now and yield one family per metric."""
        return self._families(self._read())

    def _families(self, samples: Sequence[GpuSample]) -> Iterator[Metric]:
        energy = CounterMetricFamily(
            _ENERGY_NAME, _ENERGY_DOC, labels=self._label_names, unit="joules"
        )
        gauges = [
            GaugeMetricFamily(g.name, g.doc, labels=self._label_names, unit=g.unit) for g in _GAUGES
        ]
        for sample in samples:
            labels = [str(sample.index), sample.uuid, sample.name, *self._extra.values()]
            energy.add_metric(labels, sample.energy_j)
            for gauge, family in zip(_GAUGES, gauges, strict=True):
                value = gauge.value(sample)
                if value is not None:  # an unsupported reading is absent, never 0
                    family.add_metric(labels, value)
        yield energy
        yield from gauges
        if self._info:
            info = InfoMetricFamily(EXPORTER_INFO.removesuffix("_info"), "Where the GPUs are read")
            info.add_metric([], self._info)
            yield info
