"""`LocalRunner`: trials on a real `vllm serve` on this host's GPUs plus `jouletune exporter`.

Power limits and clock locks only when not read-only. The engine inherits this process's
environment, so it runs on the first TP of the GPUs CUDA_VISIBLE_DEVICES and
NVIDIA_VISIBLE_DEVICES leave visible: those (`VisibleDevices.engine_gpus`, by UUID) are the
GPUs the exporter counts, the caps and locks apply to and whose memory is watched. Each
limit as found, and each lock, is on disk while changed (`LimitStore`), for the next run to
restore after a crash. `JOULETUNE_VLLM_CMD` replaces `vllm serve` (CI puts `jouletune
sim-server` there: same flags; see `jouletune.engine`), `JOULETUNE_EXPORTER_CMD` the
exporter, and `JOULETUNE_SIM_GPUS_URL` NVML: the sim-server whose GPUs stand in for the
host's (`{server_url}` is the one the runner started, e.g. `jouletune sim-server
--node-gpus 2`, a simulated two-GPU node).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Sequence

from jouletune.contract import ENGINE_PORT
from jouletune.engine import vllm_command
from jouletune.gpu import (
    Gpu,
    GpuError,
    GpuPermissionError,
    LimitStore,
    NvmlGpu,
    VisibleDevices,
    default_state_dir,
    open_nvml_gpus,
    open_sim_gpus,
    sample_all,
)
from jouletune.tuner._point import Point
from jouletune.tuner._process import StartError
from jouletune.tuner._runners import _HOST, RunnerError, _check_ranges, _jouletune, _ProcessRunner
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["ENV_SIM_GPUS_URL", "LocalRunner"]

ENV_SIM_GPUS_URL = "JOULETUNE_SIM_GPUS_URL"
# A restarted vLLM must find the GPU memory its predecessor held released.
_GPU_MEMORY_FREE_TIMEOUT_S = 60.0
_GPU_MEMORY_FREE_BYTES = 1 << 30


class LocalRunner(_ProcessRunner):
    """Trials on a real `vllm serve` on this host's GPUs (or whatever JOULETUNE_VLLM_CMD
    names), energy from `jouletune exporter` (NVML, or JOULETUNE_EXPORTER_CMD) over the GPUs
    the engine uses.

    Args:
        spec: the study's spec.
        read_only: never change a power limit.
        port: the engine's port.
        server_command: replaces `vllm serve` (default: JOULETUNE_VLLM_CMD, else vLLM).
        exporter_command: replaces `jouletune exporter` (default: JOULETUNE_EXPORTER_CMD);
            `{server_url}` in it is the engine's URL.
        sim_gpus_url: a sim-server whose GPUs stand in for NVML's (default:
            JOULETUNE_SIM_GPUS_URL); `{server_url}` as above.
        store: where limits as found are kept while capped (default: the default state
            directory).
    """

    name = "local"

    def __init__(
        self,
        *,
        spec: BenchmarkSpec,
        read_only: bool = False,
        port: int | None = ENGINE_PORT,
        server_command: Sequence[str] | None = None,
        exporter_command: Sequence[str] | None = None,
        sim_gpus_url: str | None = None,
        store: LimitStore | None = None,
    ) -> None:
        super().__init__(
            spec=spec,
            read_only=read_only,
            server_port=port,
            store=store or LimitStore(default_state_dir()),
        )
        self._server_command = list(server_command or vllm_command())
        env_exporter = os.environ.get("JOULETUNE_EXPORTER_CMD")
        self._exporter_command = list(
            exporter_command or (shlex.split(env_exporter) if env_exporter else [])
        )
        self._sim_gpus_url = sim_gpus_url or os.environ.get(ENV_SIM_GPUS_URL) or None
        self._visible = VisibleDevices.from_env()
        self._nvml: list[Gpu] | None = None

    async def preflight(self, caps_w: Sequence[float], clocks_mhz: Sequence[int] = ()) -> None:
        """Where NVML answers: the GPUs the largest engine would use must be visible and,
        with caps or locks to apply, every one within each GPU's range and permitted."""
        if self._sim_gpus_url is not None:
            return  # the stand-in's GPUs exist only once its server runs
        needs_nvml = bool(caps_w or clocks_mhz) and not self._read_only
        try:
            host = self._nvml_gpus()
        except RunnerError:
            if needs_nvml:
                raise
            return  # no NVML (CI's stand-in server): nothing to check
        widest = max(self._spec.search_space.tensor_parallel_size, default=1)
        try:
            gpus = _engine_gpus(self._visible, host, widest)
        except ValueError as err:
            raise RunnerError(str(err)) from None
        if needs_nvml:
            _check_settings(gpus, caps_w, clocks_mhz)

    def _server_argv(self, config: Point, port: int) -> list[str]:
        return [*self._server_command, *self._engine_args(config, port)]

    def _exporter_argv(
        self, config: Point, server_url: str, port: int, gpus: list[Gpu] | None
    ) -> list[str]:
        # The exporter counts exactly the engine's GPUs, named by UUID (indices differ
        # between a container's view and the host's).
        chosen = [] if gpus is None else ["--gpus", ",".join(g.uuid for g in gpus)]
        if self._exporter_command:
            command = [part.replace("{server_url}", server_url) for part in self._exporter_command]
            return [*command, "--host", _HOST, "--port", str(port), *chosen, *self._format()]
        if gpus is None:
            raise StartError("cannot tell which GPUs the engine uses: NVML does not answer")
        exporter = [*_jouletune(), "exporter", "--host", _HOST, "--port", str(port)]
        return [*exporter, *chosen, *self._format()]

    def _gpus(self, config: Point, server_url: str) -> list[Gpu] | None:
        """The GPUs the engine uses; None where neither NVML nor a stand-in answers."""
        if self._sim_gpus_url is not None:
            host: list[Gpu] = list(
                open_sim_gpus(self._sim_gpus_url.replace("{server_url}", server_url))
            )
        else:
            try:
                host = self._nvml_gpus()
            except RunnerError:
                return None
        return _engine_gpus(self._visible, host, config.tensor_parallel_size)

    def _nvml_gpus(self) -> list[Gpu]:
        if self._nvml is None:
            try:
                self._nvml = list(open_nvml_gpus())
            except GpuError as err:
                raise RunnerError(f"cannot read this host's GPUs: {err}") from None
        return self._nvml

    async def _released(self, gpus: list[Gpu] | None) -> None:
        """Wait (bounded) until the engine's GPUs' memory is back near empty (NVML only: a
        stand-in's GPUs went with its server)."""
        real = [g for g in gpus or [] if isinstance(g, NvmlGpu)]
        deadline = time.monotonic() + _GPU_MEMORY_FREE_TIMEOUT_S
        while real and time.monotonic() < deadline:
            if all(s.memory_used_bytes < _GPU_MEMORY_FREE_BYTES for s in sample_all(real)):
                return
            await asyncio.sleep(0.5)


def _engine_gpus(visible: VisibleDevices, host: Sequence[Gpu], count: int) -> list[Gpu]:
    """The GPUs of `host` an engine with tensor parallelism `count` uses (ValueError: the
    visible-device variables do not leave that many)."""
    by_index = {gpu.index: gpu for gpu in host}
    return [
        by_index[i] for i in visible.engine_gpus({i: g.uuid for i, g in by_index.items()}, count)
    ]


def _check_settings(
    gpus: Sequence[Gpu], caps_w: Sequence[float], clocks_mhz: Sequence[int]
) -> None:
    """Every cap and lock within each GPU's range, and the permission to set them
    (RunnerError)."""
    for gpu in gpus:
        _check_ranges(gpu, caps_w, clocks_mhz)
        current_w = gpu.sample().power_limit_w
        try:
            # Writing the limit it already has changes nothing and proves the permission
            # (locking clocks needs the same: root or CAP_SYS_ADMIN; a lock cannot be probed
            # without changing the clocks), so a study without it stops here instead of
            # failing every capped or locked trial.
            if current_w is not None:
                gpu.set_power_limit_w(current_w)
        except GpuPermissionError as err:
            raise RunnerError(f"{err}; run as root or with --read-only") from None
