"""Runners: what serves a study's trials. One interface, so the operator can add a pod runner.

A runner starts a server for a point's server configuration (`runner.server(point.server,
...)`, an async context manager that stops it on exit) and measures plans on it
(`server.measure(plan, ...)`, which is `_measure.measure_point`); the loop keeps one server while
consecutive plans share its configuration.

* `SimRunner`: `jouletune sim-server` plus `jouletune exporter --sim` on this machine; power
  limits and clock locks through the sim's GPUs; with a GPU profile (`jouletune calibrate`)
  the sim-servers run its parameters (`--gpu-profile`).
* `LocalRunner`: a real `vllm serve` on this host's GPUs plus `jouletune exporter` (NVML);
  power limits and clock locks only when not read-only. The engine inherits this process's
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
import contextlib
import dataclasses
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
from jouletune.gpu.simulated import SimulatedGpu, gpu_model
from jouletune.loadgen import EnergySource
from jouletune.tuner._measure import Target, measure_point
from jouletune.tuner._point import Point
from jouletune.tuner._process import ServerProcess, StartError, port_busy, wait_port_free
from jouletune.tuner._records import TrialOutcome, TrialPlan
from jouletune.tuner._space import serve_args
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["ENV_SIM_GPUS_URL", "LocalRunner", "Runner", "RunnerError", "SimRunner", "TrialServer"]

ENV_SIM_GPUS_URL = "JOULETUNE_SIM_GPUS_URL"

_HOST = "127.0.0.1"
# A stopped server's port must come free before the next starts; vLLM releases it at exit.
_PORT_FREE_TIMEOUT_S = 30.0
# A restarted vLLM must find the GPU memory its predecessor held released.
_GPU_MEMORY_FREE_TIMEOUT_S = 60.0
_GPU_MEMORY_FREE_BYTES = 1 << 30
# The exporter answers /healthz in well under a second once it runs.
_EXPORTER_START_TIMEOUT_S = 30.0


class RunnerError(RuntimeError):
    """The runner cannot run this study at all (checked before any trial); one line."""


class TrialServer(Protocol):
    """A running server that measures plans sharing its configuration."""

    def alive(self) -> bool:
        """False once the server died; the loop then starts a new one for the next plan."""
        ...

    async def measure(self, plan: TrialPlan, *, trial_dir: Path) -> TrialOutcome:
        """Measure `plan` (its power limit applied and restored); never raises for a failed
        measurement: the outcome carries the reason."""
        ...


class Runner(Protocol):
    """Starts servers for server configurations."""

    name: str

    async def preflight(self, caps_w: Sequence[float], clocks_mhz: Sequence[int] = ()) -> None:
        """Refuse, before any trial, a study this runner cannot serve (raise RunnerError):
        `caps_w` and `clocks_mhz` are the power limits and SM clock locks it will set."""
        ...

    def server(self, config: Point, *, log_dir: Path) -> AbstractAsyncContextManager[TrialServer]:
        """Start a server for `config` (raise StartError when it cannot); stop it on exit."""
        ...


@dataclass(kw_only=True)
class _Running:
    """One server, its exporter, and the GPUs its trials cap."""

    spec: BenchmarkSpec
    server: ServerProcess
    exporter: ServerProcess
    gpus: list[Gpu]
    energy_gpus: list[str]
    read_only: bool
    store: LimitStore | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def alive(self) -> bool:
        return self.server.alive() and self.exporter.alive()

    async def measure(self, plan: TrialPlan, *, trial_dir: Path) -> TrialOutcome:
        trial_dir.mkdir(parents=True, exist_ok=True)
        _link(trial_dir / "server.log", self.server.log_path)
        energy = self.spec.energy
        named = energy.exporter_url or energy.prometheus_url
        # The spec's exporter or Prometheus (which see more GPUs than the engine's: picked by
        # UUID), else the exporter beside the server, which serves only the engine's.
        exporter = energy.exporter_url if named else self.exporter.url
        target = Target(
            base_url=self.server.url,
            exporter_urls=[exporter] if exporter else [],
            energy_gpus=self.energy_gpus if named else (),
            gpus=() if self.read_only else self.gpus,
            lost=self._lost,
            limit_store=self.store,
        )
        outcome = await measure_point(
            target, plan.point, spec=self.spec, seed_offset=plan.number, trial_dir=trial_dir
        )
        return dataclasses.replace(outcome, server_run=self.run_id)

    def _lost(self) -> str | None:
        return None if self.server.alive() else self.server.exit_reason()


class _ProcessRunner:
    """Shared by the sim and local runners: a server process and an exporter beside it."""

    name = "process"

    def __init__(
        self,
        *,
        spec: BenchmarkSpec,
        read_only: bool,
        server_port: int | None,
        store: LimitStore | None = None,
    ) -> None:
        self._spec = spec
        self._read_only = read_only or spec.gpu.read_only
        self._server_port = server_port
        self._store = store

    async def preflight(self, caps_w: Sequence[float], clocks_mhz: Sequence[int] = ()) -> None:
        """Nothing to check by default."""

    @asynccontextmanager
    async def server(self, config: Point, *, log_dir: Path) -> AsyncIterator[_Running]:
        port = self._server_port or _free_port()
        if port_busy(_HOST, port):
            raise StartError(f"port {port} is busy: another server listens there")
        url = f"http://{_HOST}:{port}"
        server = ServerProcess.start(
            name="server",
            argv=self._server_argv(config, port),
            log_path=log_dir / "server.log",
            url=url,
        )
        exporter: ServerProcess | None = None
        gpus: list[Gpu] | None = None
        try:
            await server.wait_healthy("/health", timeout_s=self._spec.engine.startup_timeout_s)
            try:
                gpus = self._gpus(config, url)
            except (GpuError, ValueError) as err:
                raise StartError(f"the engine's GPUs: {err}") from None
            exporter_port = _free_port()
            exporter = ServerProcess.start(
                name="exporter",
                argv=self._exporter_argv(config, url, exporter_port, gpus),
                log_path=log_dir / "exporter.log",
                url=f"http://{_HOST}:{exporter_port}",
            )
            await exporter.wait_healthy("/healthz", timeout_s=_EXPORTER_START_TIMEOUT_S)
            yield _Running(
                spec=self._spec,
                server=server,
                exporter=exporter,
                gpus=[] if self._read_only or gpus is None else gpus,
                energy_gpus=[] if gpus is None else [g.uuid for g in gpus],
                read_only=self._read_only,
                store=self._store,
            )
        finally:
            if exporter is not None:
                await exporter.stop()
            await server.stop()
            if not await wait_port_free(_HOST, port, timeout_s=_PORT_FREE_TIMEOUT_S):
                raise StartError(f"port {port} still busy after the server stopped")
            await self._released(gpus)

    def _server_argv(self, config: Point, port: int) -> list[str]:
        raise NotImplementedError

    def _format(self) -> list[str]:
        """The exporter's format: dcgm-exporter's names when the spec reads energy as `dcgm`
        and names no exporter of its own (the bench then reads what a cluster's would serve)."""
        energy = self._spec.energy
        named = energy.exporter_url or energy.prometheus_url
        return ["--format", "dcgm"] if energy.source is EnergySource.DCGM and not named else []

    def _exporter_argv(
        self, config: Point, server_url: str, port: int, gpus: list[Gpu] | None
    ) -> list[str]:
        raise NotImplementedError

    def _gpus(self, config: Point, server_url: str) -> list[Gpu] | None:
        """The GPUs the started server uses (None: unknown here); a GpuError or ValueError
        becomes the start's StartError."""
        raise NotImplementedError

    async def _released(self, gpus: list[Gpu] | None) -> None:
        """Wait until the stopped server's resources are free (GPU memory, for real GPUs)."""

    def _engine_args(self, config: Point, port: int) -> list[str]:
        return serve_args(config, self._spec, host=_HOST, port=port).argv()


class SimRunner(_ProcessRunner):
    """Trials on `jouletune sim-server` processes; caps through the sim's GPUs."""

    name = "sim"

    def __init__(
        self, *, spec: BenchmarkSpec, read_only: bool = False, gpu_profile: Path | None = None
    ) -> None:
        super().__init__(spec=spec, read_only=read_only, server_port=None)
        # Absolute: the sim-servers run from their own working directory.
        self._gpu_profile = None if gpu_profile is None else gpu_profile.resolve()

    async def preflight(self, caps_w: Sequence[float], clocks_mhz: Sequence[int] = ()) -> None:
        """Every cap and lock within the simulated GPU's ranges (its servers' GPUs exist only
        once they run, so the catalog's model is asked)."""
        try:
            model = gpu_model(self._spec.gpu.type)
        except ValueError as err:
            raise RunnerError(f"gpu.type: {err}") from None
        sim = SimulatedGpu(model=model, index=0)
        _check_ranges(sim, caps_w, clocks_mhz)

    def _server_argv(self, config: Point, port: int) -> list[str]:
        profile = [] if self._gpu_profile is None else ["--gpu-profile", str(self._gpu_profile)]
        return [
            *_jouletune(),
            "sim-server",
            *self._engine_args(config, port),
            "--gpu",
            self._spec.gpu.type,
            *profile,
        ]

    def _exporter_argv(
        self, config: Point, server_url: str, port: int, gpus: list[Gpu] | None
    ) -> list[str]:
        # The server simulates exactly the engine's GPUs: all of them, named so that the
        # shell's CUDA_VISIBLE_DEVICES (meant for real GPUs) does not narrow them.
        chosen = ",".join(str(i) for i in range(config.tensor_parallel_size))
        exporter = [*_jouletune(), "exporter", "--host", _HOST, "--port", str(port)]
        return [*exporter, "--sim", server_url, "--gpus", chosen, *self._format()]

    def _gpus(self, config: Point, server_url: str) -> list[Gpu]:
        return list(open_sim_gpus(server_url, selection=range(config.tensor_parallel_size)))


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


def _check_ranges(gpu: Gpu, caps_w: Sequence[float], clocks_mhz: Sequence[int]) -> None:
    """Every cap within `gpu`'s power-limit range, every lock within its clocks (RunnerError)."""
    rng = gpu.power_limit_range()
    bad = [c for c in caps_w if not rng.min_w <= c <= rng.max_w]
    if bad:
        raise RunnerError(
            f"searchSpace.powerLimitW {bad} outside GPU {gpu.index} ({gpu.name})'s "
            f"range {rng.min_w:g}-{rng.max_w:g} W"
        )
    if not clocks_mhz:
        return
    try:
        clocks = gpu.sm_clock_range()
    except GpuError as err:
        raise RunnerError(f"searchSpace.smClockMhz: {err}") from None
    bad_mhz = [c for c in clocks_mhz if not clocks.min_mhz <= c <= clocks.max_mhz]
    if bad_mhz:
        raise RunnerError(
            f"searchSpace.smClockMhz {bad_mhz} outside GPU {gpu.index} ({gpu.name})'s "
            f"supported clocks {clocks.min_mhz}-{clocks.max_mhz} MHz"
        )


def _jouletune() -> list[str]:
    return [sys.executable, "-m", "jouletune"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _link(link: Path, target: Path) -> None:
    # A report without the link still finds the log in the server's session folder.
    if not link.exists():
        with contextlib.suppress(OSError):
            link.symlink_to(os.path.relpath(target, link.parent))
