"""Measuring the plan: one `jouletune bench` closed loop per point, each saved as it completes.

Each point runs through the load generator's Python API (`run_bench`, which first waits for
the drain rule) with per-request detail, under the point's power limit or SM clock lock
(held with `jouletune.gpu.power_limit` and `clock_lock`, so the limit found is restored and
the lock reset afterwards, on an exception and on SIGTERM; with a `LimitStore`, each setting
as found is on disk meanwhile, for the next run to put back after a SIGKILL). Its result
JSON is written to `points/NAME.json` the moment it is known; a point whose file exists is
not measured again, so an interrupted calibration resumes where it stopped and nothing
measured is lost.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from jouletune.calibrate._plan import CalibrationPlan, PlanPoint
from jouletune.calibrate._target import CalibrationError
from jouletune.gpu import Gpu, GpuError, LimitStore, clock_lock, power_limit
from jouletune.loadgen import BenchConfig, BenchError, BenchResult, run_bench

__all__ = ["POINTS_DIR", "bench_config", "measure_plan", "point_path"]

POINTS_DIR = "points"
# Prompts to draw per stream: enough for the duration at an ITL as short as this (an H100
# decodes a small model at ~6 ms a token); the bench stops sending at the duration anyway.
_FASTEST_ITL_S = 0.003


def point_path(out_dir: Path, point: PlanPoint) -> Path:
    """Where a point's bench result is kept."""
    return out_dir / POINTS_DIR / f"{point.name}.json"


def bench_config(plan: CalibrationPlan, point: PlanPoint, *, index: int) -> BenchConfig:
    """The bench run that measures `point`, the `index`-th of the plan."""
    per_stream = math.ceil(plan.duration_s / (point.workload.output_len * _FASTEST_ITL_S)) + 2
    return BenchConfig(
        base_url=plan.base_url,
        model=plan.server.served_model,
        random_input_len=point.workload.input_len,
        random_output_len=point.workload.output_len,
        num_prompts=point.concurrency * per_stream,
        max_concurrency=point.concurrency,
        seed=plan.seed + index,
        exporter_urls=list(plan.exporter_urls),
        duration_s=plan.duration_s,
        save_detailed=True,  # the replay sends the same requests in the same order
        validity=plan.validity,
    )


async def measure_plan(
    plan: CalibrationPlan,
    out_dir: Path,
    *,
    gpus: Sequence[Gpu],
    log: Callable[[str], None],
    store: LimitStore | None = None,
) -> None:
    """Measure every point of `plan` that has no saved result yet, in plan order.

    Raises:
        CalibrationError: a point cannot be measured (unreachable server or exporter, a
            limit or clock lock that cannot be set); the points before it are saved.
    """
    (out_dir / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    for index, point in enumerate(plan.points):
        path = point_path(out_dir, point)
        before = _saved_invalid_reason(path)
        if before is None:
            log(f"{point.name}: measured before, kept ({path})")
            continue
        if before:  # a point that could not be measured then (a server lost) is measured again
            log(f"{point.name}: INVALID before ({before}), measuring it again")
        _check_settings(plan, point, gpus)
        log(f"{point.name}: measuring ({plan.duration_s:g} s of requests)")
        result = await _measure_point(plan, point, index, gpus, store)
        _write(path, result)
        log(f"{point.name}: {_summary(result)}")


def _saved_invalid_reason(path: Path) -> str | None:
    """Whether a point must be measured: "" when nothing is saved, why the saved result was
    invalid, or None for a valid one (kept). A file that is not a result is measured again
    too; `load_measured` would refuse it."""
    if not path.exists():
        return ""
    try:
        result = BenchResult.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return "not a bench result"
    return None if result.valid else result.invalid_reason or "invalid"


def _check_settings(plan: CalibrationPlan, point: PlanPoint, gpus: Sequence[Gpu]) -> None:
    if point.changes_gpu and plan.read_only:
        raise CalibrationError(f"{point.name}: read-only, yet the point changes a GPU setting")
    if point.changes_gpu and not gpus:
        raise CalibrationError(f"{point.name}: no GPU to set the power limit or clock lock on")


async def _measure_point(
    plan: CalibrationPlan,
    point: PlanPoint,
    index: int,
    gpus: Sequence[Gpu],
    store: LimitStore | None,
) -> BenchResult:
    config = bench_config(plan, point, index=index)
    try:
        with (
            power_limit(gpus, point.power_limit_w, store=store),
            clock_lock(gpus, point.sm_clock_mhz, store=store),
        ):
            return await run_bench(config)
    except BenchError as err:
        raise CalibrationError(f"{point.name}: {err}") from None
    except (GpuError, ValueError) as err:
        raise CalibrationError(f"{point.name}: {_setting(point)}: {err}") from None


def _setting(point: PlanPoint) -> str:
    return "power limit" if point.power_limit_w is not None else "SM clock lock"


def _write(path: Path, result: BenchResult) -> None:
    """Write atomically: a crash mid-write leaves no half file that would count as measured."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(result.model_dump_json(indent=1))
    os.replace(tmp, path)


def _summary(result: BenchResult) -> str:
    if not result.valid:
        return f"INVALID ({result.invalid_reason}); left out of the fit, measured again on a rerun"
    j = result.energy_per_output_token_j
    itl = result.itl_ms.p50
    power = result.avg_power_w
    return (
        f"{j:.4f} J/token, ITL p50 {itl:.2f} ms, {power:.0f} W"
        if j is not None and itl is not None and power is not None
        else "measured"
    )
