"""`jouletune operator trial`: the load generator container of a trial pod.

Reads its `PodPlan` from `JOULETUNE_TRIAL`, waits until the engine answers `/health`, then
measures the plan's point and its riders with the tuner's `measure_sweep` (the procedure the
CLI's runners use), stepping power limits and SM clock locks through the exporter sidecar's
loopback control port (only the exporter may change them), and writes a `PodResult` to the
termination message. Where `spec.energy` names the cluster's exporter or Prometheus, it first
reads the GPUs the engine listed (`PodPlan.gpus_file`) and counts only their series. The exit
code is 0 when the points were measured (each point's verdict, figures or a reason, is in the
message) and 1 when nothing could be; either way the message says what happened, so the
operator never has to read logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from jouletune.gpu import (
    EXPORTER_GPUS_PATH,
    Gpu,
    GpuError,
    GpuSelector,
    open_remote_gpus,
    read_gpu_list,
)
from jouletune.operator._wire import ENV_PLAN, PodPlan, PodResult, PodTrial
from jouletune.tuner import Target, measure_sweep

__all__ = ["engine_gpus", "main", "run_trial", "wait_healthy"]

_log = logging.getLogger("jouletune.operator.trial")
# How often the engine's /health is polled while it starts (vLLM takes minutes; the sim ms).
_HEALTH_POLL_S = 0.2
# The engine lists its GPUs before it serves (the vLLM container's script, the sim-server), so
# the list is there once /health answers; the grace covers a volume slow to show the rename.
_GPU_LIST_TIMEOUT_S = 5.0
_GPU_LIST_POLL_S = 0.1
# The exporter serves once it has read the engine's GPU list, written before /health answers.
_EXPORTER_TIMEOUT_S = 30.0
_EXIT_MEASURED = 0
_EXIT_FAILED = 1
_EXIT_USAGE = 2


async def wait_healthy(url: str, *, timeout_s: float, path: str = "/health") -> bool:
    """Poll `url` + `path` until it answers 200; False when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url.rstrip("/") + path) as resp:
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(_HEALTH_POLL_S)
    return False


async def run_trial(plan: PodPlan) -> PodResult:
    """Measure the plan's points; never raises for a failed measurement."""
    spec = plan.spec
    not_ready = await _not_ready(plan)
    if not_ready is not None:
        return not_ready
    try:
        gpus = (
            open_remote_gpus(plan.control_url, path=EXPORTER_GPUS_PATH) if plan.control_url else []
        )
    except (GpuError, ValueError) as err:
        return PodResult.failure("PowerLimitFailed", str(err))
    try:
        energy_gpus = [] if plan.gpus_file is None else await engine_gpus(Path(plan.gpus_file))
    except ValueError as err:
        return PodResult.failure("GpuListMissing", str(err))
    done = await measure_sweep(
        _target(plan, gpus=gpus, energy_gpus=energy_gpus),
        plan.points,
        spec=spec,
        number=plan.trial,
        caps=plan.caps,
        clocks=plan.clocks,
        walk=plan.walk,
    )
    return PodResult(ok=True, trials=[PodTrial.of(point, outcome) for point, outcome in done])


async def _not_ready(plan: PodPlan) -> PodResult | None:
    """Wait for the engine, then the exporter sidecar if energy comes from it; the failure
    when one does not answer in time."""
    startup_s = plan.spec.engine.startup_timeout_s
    if not await wait_healthy(plan.engine_url, timeout_s=startup_s):
        return PodResult.failure(
            "EngineNotReady",
            f"the engine did not answer {plan.engine_url}/health within {startup_s:g} s",
        )
    exporter = plan.exporter_url
    # Sidecars start beside the load generator, not before it: the bench's first scrape
    # must not race the exporter (it fails fast on an unreachable one).
    if exporter and not await wait_healthy(
        exporter, timeout_s=_EXPORTER_TIMEOUT_S, path="/healthz"
    ):
        return PodResult.failure(
            "ExporterNotReady",
            f"the exporter did not answer {exporter}/healthz within {_EXPORTER_TIMEOUT_S:g} s",
        )
    return None


async def engine_gpus(path: Path, *, timeout_s: float = _GPU_LIST_TIMEOUT_S) -> list[str]:
    """The UUIDs of the GPUs the engine listed in `path`, waiting up to `timeout_s` for it.

    Raises:
        ValueError: no list in time, an unreadable one, or GPUs named by index, which no
            cluster exporter's series carry (one line).
    """
    deadline = time.monotonic() + timeout_s
    while (listed := _listed(path)) is None:
        if time.monotonic() > deadline:
            raise ValueError(f"the engine listed no GPUs in {path} within {timeout_s:g} s")
        await asyncio.sleep(_GPU_LIST_POLL_S)
    indices = [str(g) for g in listed if isinstance(g, int)]
    if indices:
        raise ValueError(
            f"the engine listed its GPUs by index ({','.join(indices)}) in {path}: the energy "
            "exporter's series name GPUs by UUID"
        )
    return [g for g in listed if isinstance(g, str)]


def _target(plan: PodPlan, *, gpus: Sequence[Gpu], energy_gpus: Sequence[str]) -> Target:
    # The sidecar's metrics, else the exporter the spec names (none: the spec's Prometheus).
    exporter = plan.exporter_url or plan.spec.energy.exporter_url
    return Target(
        base_url=plan.engine_url,
        exporter_urls=[exporter] if exporter else [],
        gpus=gpus,
        energy_gpus=energy_gpus,
    )


def _listed(path: Path) -> list[GpuSelector] | None:
    try:
        return read_gpu_list(path)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def main(argv: list[str]) -> int:
    """Run one trial; write the compact result to the termination message."""
    parser = argparse.ArgumentParser(
        prog="jouletune operator trial",
        description="Run one trial inside a trial pod (the operator starts this).",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path("/dev/termination-log"),
        help="where Kubernetes reads the result (default /dev/termination-log)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raw = os.environ.get(ENV_PLAN)
    if not raw:
        print(f"jouletune operator trial: {ENV_PLAN} is not set", file=sys.stderr)
        return _EXIT_USAGE
    try:
        plan = PodPlan.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as err:
        line = str(err).splitlines()[0]
        print(f"jouletune operator trial: {ENV_PLAN} is not a plan: {line}", file=sys.stderr)
        return _EXIT_USAGE
    _log.info(
        "trial %d of %s (%d point(s)): waiting for %s",
        plan.trial,
        plan.benchmark,
        len(plan.points),
        plan.engine_url,
    )
    result = asyncio.run(run_trial(plan))
    message = result.to_message()
    try:
        args.termination_log.write_text(message)
    except OSError as err:
        print(
            f"jouletune operator trial: cannot write {args.termination_log}: {err.strerror}",
            file=sys.stderr,
        )
        return _EXIT_FAILED
    print(message)
    return _EXIT_MEASURED if result.ok else _EXIT_FAILED
