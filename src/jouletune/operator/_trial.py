"""`jouletune operator trial`: the load generator container of a trial pod.

Reads its `PodPlan` from `JOULETUNE_TRIAL`, waits until the engine answers `/health`, then
measures the plan's point and its riders with the tuner's `measure_sweep` (the procedure the
CLI's runners use), stepping power limits and SM clock locks through the exporter sidecar's
loopback control port (only the exporter may change them), and writes a `PodResult` to the
termination message. The exit code is 0 when the points were measured (each point's verdict,
figures or a reason, is in the message) and 1 when nothing could be; either way the message
says what happened, so the operator never has to read logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from jouletune.gpu import EXPORTER_GPUS_PATH, GpuError, open_remote_gpus
from jouletune.operator._wire import ENV_PLAN, PodPlan, PodResult, PodTrial
from jouletune.tuner import Target, measure_sweep

__all__ = ["main", "run_trial", "wait_healthy"]

_log = logging.getLogger("jouletune.operator.trial")
# How often the engine's /health is polled while it starts (vLLM takes minutes; the sim ms).
_HEALTH_POLL_S = 0.2
_EXIT_MEASURED = 0
_EXIT_FAILED = 1
_EXIT_USAGE = 2


async def wait_healthy(url: str, *, timeout_s: float) -> bool:
    """Poll `url`/health until it answers 200; False when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url.rstrip("/") + "/health") as resp:
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(_HEALTH_POLL_S)
    return False


async def run_trial(plan: PodPlan) -> PodResult:
    """Measure the plan's points; never raises for a failed measurement."""
    spec = plan.spec
    if not await wait_healthy(plan.engine_url, timeout_s=spec.engine.startup_timeout_s):
        return PodResult.failure(
            "EngineNotReady",
            f"the engine did not answer {plan.engine_url}/health within "
            f"{spec.engine.startup_timeout_s:g} s",
        )
    try:
        gpus = (
            open_remote_gpus(plan.control_url, path=EXPORTER_GPUS_PATH) if plan.control_url else []
        )
    except (GpuError, ValueError) as err:
        return PodResult.failure("PowerLimitFailed", str(err))
    target = Target(base_url=plan.engine_url, exporter_urls=[plan.exporter_url], gpus=gpus)
    done = await measure_sweep(
        target,
        plan.points,
        spec=spec,
        number=plan.trial,
        caps=plan.caps,
        clocks=plan.clocks,
        walk=plan.walk,
    )
    return PodResult(ok=True, trials=[PodTrial.of(point, outcome) for point, outcome in done])


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
