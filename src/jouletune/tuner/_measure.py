"""Measuring points on a running server: the one procedure the CLI and the trial pods share.

It starts nothing. Given a server, its exporters and the GPUs a cap applies to, it measures
one point: cap the GPUs and lock their SM clocks as the point says (both restored
afterwards), run the bench (which first waits for the drain rule), and turn the result into
`TrialFigures`, all under the trial's timeout. The CLI's runners call `measure_point` for each
plan; a trial pod calls `measure_sweep` for its plan and the riders the study gave it, so it
sweeps power limits and clock locks under one engine start as the CLI's walk does, and stops
where the walk would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from jouletune.gpu import Gpu, GpuError, LimitStore, clock_lock, power_limit, sample_all
from jouletune.tuner._boundary import gpu_ladders, next_gpu_step
from jouletune.tuner._figures import InvalidMeasurementError, TrialFigures
from jouletune.tuner._point import Point
from jouletune.tuner._provenance import Provenance
from jouletune.tuner._records import Role, TrialOutcome, TrialRecord, TrialState
from jouletune.tuner.spec import BenchmarkSpec

if TYPE_CHECKING:
    from jouletune.loadgen import BenchConfig

__all__ = ["Target", "bench_config", "measure_point", "measure_sweep"]

# Riders of one pod draw prompts seeded apart from each other (and from nearby trial numbers),
# so a server never sees the same prompts twice: vLLM's prefix cache would flatter the later.
_RIDER_SEED_STRIDE = 100_003


@dataclass(frozen=True, kw_only=True)
class Target:
    """A running server to measure on.

    Attributes:
        base_url: the engine's OpenAI-compatible API.
        exporter_urls: the energy exporters of the engine's GPUs (none when the spec reads
            energy from Prometheus).
        gpus: the GPUs a point's power limit and clock lock apply to; empty when GPU
            settings never change (read-only).
        energy_gpus: UUIDs of the GPUs the engine uses, whose energy counts (all the
            exporters serve when empty).
        lost: says why the server is gone (one line), or None while it runs; lets a failed
            measurement name the real cause.
        limit_store: where each GPU's settings as found are written while they are changed,
            for the next run to restore after a crash; None where the GPUs' owner keeps them
            (the exporter's control port in a pod) or they end with the run (the simulator's).
    """

    base_url: str
    exporter_urls: Sequence[str]
    gpus: Sequence[Gpu] = ()
    energy_gpus: Sequence[str] = ()
    lost: Callable[[], str | None] = lambda: None
    limit_store: LimitStore | None = None


def bench_config(
    spec: BenchmarkSpec,
    *,
    point: Point,
    seed_offset: int,
    base_url: str,
    exporter_urls: Sequence[str],
    energy_gpus: Sequence[str] = (),
) -> BenchConfig:
    """The load generator's configuration for measuring `point` of `spec` at `base_url`.

    Each trial draws its own prompts (the workload's seed plus `seed_offset`, the trial
    number): trials that share a server would otherwise resend the same prompts, and vLLM's
    prefix cache would make every trial after the first look cheaper than it is. With
    `workload.saturate` the closed loop runs `max_num_seqs` clients, the point's batch bound.
    Energy comes from `spec.energy`: its Prometheus when it names one, else `exporter_urls`.
    """
    # Imported here: loading the tuner (the operator, `jouletune report`) needs no loadgen.
    from jouletune.loadgen import BenchConfig

    workload = spec.workload
    return BenchConfig(
        base_url=base_url,
        model=spec.model,
        tokenizer=workload.tokenizer,
        dataset_name=workload.dataset,
        dataset_path=workload.dataset_path,
        random_input_len=workload.input_len,
        random_output_len=workload.output_len,
        random_range_ratio=workload.range_ratio,
        num_prompts=workload.num_prompts,
        request_rate=workload.request_rate,
        burstiness=workload.burstiness,
        max_concurrency=point.max_num_seqs if workload.saturate else workload.max_concurrency,
        seed=workload.seed + seed_offset,
        duration_s=workload.duration_s,
        server_max_num_seqs=point.max_num_seqs,
        energy_source=spec.energy.source,
        exporter_urls=[] if spec.energy.prometheus_url else list(exporter_urls),
        prometheus_url=spec.energy.prometheus_url,
        energy_gpus=list(energy_gpus),
        energy_labels=dict(spec.energy.labels),
        validity=spec.validity,
        # A stream silent this long is dead; the trial's own timeout bounds the whole run.
        request_timeout_s=min(600.0, spec.budget.trial_timeout_s),
    )


async def measure_point(
    target: Target,
    point: Point,
    *,
    spec: BenchmarkSpec,
    seed_offset: int,
    trial_dir: Path | None = None,
) -> TrialOutcome:
    """Measure `point` on `target`: its cap and clock lock held for the bench, restored after.

    Never raises for a failed measurement: the outcome carries the reason. With `trial_dir`,
    the bench's full result is written there as `result.json`.
    """
    from jouletune.loadgen import BenchError, run_bench

    start = time.monotonic()
    config = bench_config(
        spec,
        point=point,
        seed_offset=seed_offset,
        base_url=target.base_url,
        exporter_urls=target.exporter_urls,
        energy_gpus=target.energy_gpus,
    )
    gpus = () if point.unconstrained else target.gpus
    store = target.limit_store
    limit_w: float | None = None
    try:
        with (
            power_limit(gpus, point.power_limit_w, store=store),
            clock_lock(gpus, point.sm_clock_mhz, store=store),
        ):
            limit_w = sample_all(gpus)[0].power_limit_w if gpus else None
            # asyncio.timeout, not wait_for: the bench runs in this task, so a Ctrl-C (a
            # cancellation) reaches it directly; Python 3.11's wait_for can drop a
            # cancellation that arrives as its inner task finishes.
            async with asyncio.timeout(spec.budget.trial_timeout_s):
                result = await run_bench(config)
    except TimeoutError:
        reason = f"timed out after {spec.budget.trial_timeout_s:g} s (server hung?)"
        return _failed(target.lost() or reason, start, limit_w)
    except (BenchError, GpuError, ValueError) as err:
        return _failed(target.lost() or str(err).splitlines()[0], start, limit_w)
    if trial_dir is not None:
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "result.json").write_text(json.dumps(result.model_dump(mode="json"), indent=2))
    lost = target.lost()
    if lost is not None:
        return _failed(lost, start, limit_w)
    problem = TrialFigures.problem(result)
    try:
        figures = TrialFigures.from_result(result, num_gpus=point.tensor_parallel_size)
    except InvalidMeasurementError as err:
        failed = _failed(problem or str(err), start, limit_w, result_path=trial_dir)
        return replace(failed, warnings=tuple(result.warnings))
    return TrialOutcome(
        figures=figures,
        fail_reason=problem,  # an invalid measurement keeps its figures, and fails
        checks=tuple(result.checks),
        held_back_by=result.diagnosis.held_back_by if result.diagnosis else None,
        diagnosis=result.diagnosis.sentence if result.diagnosis else None,
        provenance=Provenance.of(result.environment),
        duration_s=time.monotonic() - start,
        power_limit_w=limit_w,
        result_path=None if trial_dir is None else str(trial_dir),
        warnings=tuple(result.warnings),
    )


async def measure_sweep(
    target: Target,
    points: Sequence[Point],
    *,
    spec: BenchmarkSpec,
    number: int,
    caps: Sequence[float | None],
    clocks: Sequence[int | None] = (None,),
    walk: bool,
) -> list[tuple[Point, TrialOutcome]]:
    """Measure `points` (a plan's point, then its riders, all under one server) in order.

    With `walk`, after each measurement the next point is the cap or clock lock the CLI's walk
    would measure next (`next_gpu_step`) if it is among the riders; the sweep ends where the
    walk would end. Without, every point is measured (the grid). `caps` and `clocks` are the
    search's limits and locks, each from None (as found) down.
    """
    ladders = gpu_ladders(caps, clocks)
    done: list[tuple[Point, TrialOutcome]] = []
    records: list[TrialRecord] = []
    todo = list(points)
    while todo:
        point = todo.pop(0)
        outcome = await measure_point(
            target, point, spec=spec, seed_offset=number + len(done) * _RIDER_SEED_STRIDE
        )
        done.append((point, outcome))
        records.append(
            TrialRecord(
                number=number, role=Role.SEARCH, state=TrialState.RUNNING, point=point
            ).finished(outcome, slos=spec.slos, objective=spec.objective)
        )
        if walk and todo:
            step = next_gpu_step(records[-1], records, ladders)
            todo = todo[todo.index(step) :] if step in todo else []
    return done


def _failed(
    reason: str, start: float, limit_w: float | None, *, result_path: Path | None = None
) -> TrialOutcome:
    return TrialOutcome(
        fail_reason=reason,
        duration_s=time.monotonic() - start,
        power_limit_w=limit_w,
        result_path=None if result_path is None else str(result_path),
    )
