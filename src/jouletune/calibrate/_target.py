"""The running server and exporters a calibration measures: probed once, before anything runs.

`probe_target` asks the server what it serves (`/v1/models`, `/version`) and each exporter
which GPUs it reads (the labels of `jouletune_gpu_energy_joules_total`), and fails with one
line when either cannot be reached. `open_target_gpus` gives the GPUs a power limit or clock
lock applies to: the sim-server's own (when the server is one) or NVML's, restricted to the
GPUs the exporters report, so a calibration never touches another GPU of the host.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from jouletune.contract import GPU_ENERGY
from jouletune.gpu import Gpu, GpuError, open_nvml_gpus, open_sim_gpus

__all__ = ["CalibrationError", "ExporterGpu", "Target", "open_target_gpus", "probe_target"]

_TIMEOUT_S = 10.0


class CalibrationError(Exception):
    """A calibration that cannot start or go on; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class ExporterGpu:
    """One GPU an exporter reads (the labels of its energy series)."""

    index: str
    uuid: str
    model_name: str


@dataclass(frozen=True, kw_only=True)
class Target:
    """What the server and its exporters said about themselves.

    Attributes:
        base_url: the server.
        served_model: the model name it answers to (`/v1/models` id).
        model_root: the model's path or id (`root`), where the server reports one.
        max_model_len: the context limit it serves (`max_model_len`, as vLLM reports it).
        engine_version: `/version`, where the server answers it.
        is_sim: True for a jouletune sim-server (it serves `/sim/gpus`).
        exporter_urls: the exporters.
        gpus: the GPUs the exporters read.
    """

    base_url: str
    served_model: str
    model_root: str | None
    max_model_len: int | None
    engine_version: str | None
    is_sim: bool
    exporter_urls: tuple[str, ...]
    gpus: tuple[ExporterGpu, ...]

    @property
    def gpu_name(self) -> str:
        """The GPUs' model name (the first one's: a server runs on one kind)."""
        return self.gpus[0].model_name


def probe_target(base_url: str, exporter_urls: Sequence[str]) -> Target:
    """Probe the server and the exporters; raises CalibrationError (one line)."""
    if not exporter_urls:
        raise CalibrationError(
            "no --exporter-url: a calibration fits energy, so it needs the GPUs' energy "
            "counters (run `jouletune exporter` beside the server)"
        )
    base_url = base_url.rstrip("/")
    models = _get_json(f"{base_url}/v1/models", "the server")
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise CalibrationError(f"{base_url}/v1/models lists no model: is this a vLLM server?")
    version = _version(base_url)
    gpus = [gpu for url in exporter_urls for gpu in _exporter_gpus(url.rstrip("/"))]
    return Target(
        base_url=base_url,
        served_model=str(data[0].get("id")),
        model_root=data[0].get("root") if isinstance(data[0].get("root"), str) else None,
        max_model_len=_positive_int(data[0].get("max_model_len")),
        engine_version=version,
        is_sim=_answers(f"{base_url}/sim/gpus"),
        exporter_urls=tuple(url.rstrip("/") for url in exporter_urls),
        gpus=tuple(gpus),
    )


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def open_target_gpus(target: Target) -> list[Gpu]:
    """The GPUs a power limit or clock lock applies to: the sim-server's, or NVML's that the
    exporters read.

    Raises:
        CalibrationError: the GPUs cannot be opened (no NVML, none matches the exporters).
    """
    uuids = {g.uuid for g in target.gpus}
    try:
        found: list[Gpu] = (
            list(open_sim_gpus(target.base_url)) if target.is_sim else list(open_nvml_gpus())
        )
    except GpuError as err:
        raise CalibrationError(
            f"cannot open the GPUs to set power limits and clock locks: {err}"
        ) from None
    chosen = [gpu for gpu in found if gpu.uuid in uuids]
    if not chosen:
        raise CalibrationError(
            f"none of this host's GPUs is one the exporters read ({', '.join(sorted(uuids))}); "
            "run the calibration on the server's host, or pass --read-only"
        )
    return chosen


def _get_json(url: str, what: str) -> object:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError) as err:
        raise CalibrationError(f"cannot reach {what} at {url}: {_reason(err)}") from None
    except ValueError:
        raise CalibrationError(f"{url} did not answer JSON: is this {what}?") from None


def _version(base_url: str) -> str | None:
    try:
        body = _get_json(f"{base_url}/version", "the server")
    except CalibrationError:
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return str(version) if version is not None else None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _exporter_gpus(url: str) -> list[ExporterGpu]:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=_TIMEOUT_S) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError) as err:
        raise CalibrationError(f"cannot reach the exporter at {url}: {_reason(err)}") from None
    gpus = [
        ExporterGpu(
            index=sample.labels.get("gpu", ""),
            uuid=sample.labels.get("uuid", ""),
            model_name=sample.labels.get("model_name", ""),
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == GPU_ENERGY
    ]
    if not gpus:
        raise CalibrationError(f"the exporter at {url} serves no {GPU_ENERGY}: is it jouletune's?")
    return gpus


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(getattr(reason, "strerror", None) or reason)
