"""`jouletune operator trial`: the load generator container of a trial pod.

Reads its `PodPlan` from `JOULETUNE_TRIAL`, waits until the engine answers `/health`, holds
the power cap (sim backend; on real GPUs the exporter sidecar holds it), runs the bench
in-process, and writes a `CompactResult` to the termination message. The exit code is 0 when
a result was measured (valid or not: the operator reads the verdict from the message) and 1
when nothing was; either way the message says what happened, so the operator never has to
read logs.
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

from jouletune.gpu import GpuError, open_sim_gpus, power_limit
from jouletune.loadgen import BenchConfig, BenchError, run_bench
from jouletune.operator._wire import ENV_PLAN, CompactResult, PodPlan

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


async def run_trial(plan: PodPlan) -> CompactResult:
    """Measure the plan's configuration; never raises for a failed measurement."""
    if not await wait_healthy(plan.engine_url, timeout_s=plan.startup_timeout_s):
        return CompactResult.failure(
            "EngineNotReady",
            f"the engine did not answer {plan.engine_url}/health within "
            f"{plan.startup_timeout_s:g} s",
        )
    try:
        config = BenchConfig.model_validate(plan.bench)
    except ValidationError as err:
        return CompactResult.failure("InvalidPlan", str(err).splitlines()[0])
    try:
        gpus = (
            open_sim_gpus(plan.engine_url, selection=plan.gpu_indices)
            if plan.set_power_limit_w is not None
            else []
        )
        with power_limit(gpus, plan.set_power_limit_w):
            held_w = gpus[0].sample().power_limit_w if gpus else None
            result = await asyncio.wait_for(run_bench(config), plan.timeout_s)
    except TimeoutError:
        return CompactResult.failure("Timeout", f"the bench ran past {plan.timeout_s:g} s")
    except BenchError as err:
        return CompactResult.failure("BenchFailed", str(err))
    except (GpuError, ValueError) as err:
        return CompactResult.failure("PowerLimitFailed", str(err))
    return CompactResult.from_bench(result.model_dump(mode="json"), power_limit_w=held_w)


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
    _log.info("trial %d of %s: waiting for %s", plan.trial, plan.benchmark, plan.engine_url)
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
