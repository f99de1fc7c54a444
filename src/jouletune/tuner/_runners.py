"""Runners: what serves a study's trials. One interface, so the operator can add a pod runner.

A runner starts a server for a point's server configuration (`runner.server(point.server,
...)`, an async context manager that stops it on exit) and measures plans on it
(`server.measure(plan, ...)`, which is `_measure.measure_point`); the loop keeps one server while
consecutive plans share its configuration.

* `SimRunner`: `jouletune sim-server` plus `jouletune exporter --sim` on this machine; power
  limits and clock locks through the sim's GPUs; with a GPU profile (`jouletune calibrate`)
  the sim-servers run its parameters (`--gpu-profile`).
* `LocalRunner` (`_local`): a real `vllm serve` on this host's GPUs plus `jouletune exporter`
  (NVML).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from jouletune.gpu import (
    Gpu,
    GpuError,
    LimitStore,
    open_sim_gpus,
)
from jouletune.gpu.simulated import SimulatedGpu, gpu_model
from jouletune.loadgen import EnergySource
from jouletune.tuner._measure import Target, measure_point
from jouletune.tuner._point import Point
from jouletune.tuner._process import ServerProcess, StartError, port_busy, wait_port_free
from jouletune.tuner._records import TrialOutcome, TrialPlan
from jouletune.tuner._space import serve_args
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["Runner", "RunnerError", "SimRunner", "TrialServer"]

_HOST = "127.0.0.1"
# A stopped server's port must come free before the next starts; vLLM releases it at exit.
_PORT_FREE_TIMEOUT_S = 30.0
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
        # The spec's exporter or Prometheus (which see more GPUs than the engine's: picked by
        # UUID), else the exporter beside the server, which serves only the engine's.
        exporter = energy.exporter_url if energy.external else self.exporter.url
        target = Target(
            base_url=self.server.url,
            exporter_urls=[exporter] if exporter else [],
            energy_gpus=self.energy_gpus if energy.external else (),
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
        dcgm = energy.source is EnergySource.DCGM
        return ["--format", "dcgm"] if dcgm and not energy.external else []

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
