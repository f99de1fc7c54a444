"""From saved measurements to a GPU profile: read the points, fit, replay, write provenance.

`fit_profile(plan, out_dir)` reads every saved bench result of the plan, measures the loaded
idle power from them, fits what the points can pin (`_fit.fitted_parameters`) and returns a
`GpuProfile` whose points carry the measured figures beside the calibrated simulator's replay
of each (a prediction) and the errors. It needs no server: `jouletune calibrate --fit-only`
runs it on an earlier calibration's folder.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from jouletune import __version__
from jouletune.calibrate._fit import (
    FitResult,
    fit_parameters,
    fitted_parameters,
    predict,
    relative_errors,
    weight,
)
from jouletune.calibrate._measure import point_path
from jouletune.calibrate._observe import Observation
from jouletune.calibrate._plan import CalibrationPlan
from jouletune.calibrate._replay import SimSetup
from jouletune.calibrate._target import CalibrationError
from jouletune.gpu.simulated import gpu_model
from jouletune.loadgen import BenchResult
from jouletune.models import model_arch
from jouletune.profile import (
    GpuProfile,
    ParameterSource,
    ProfileParameters,
    ProfilePoint,
    Provenance,
)
from jouletune.sim import DEFAULT_PERF, builtin_parameters

__all__ = ["Measured", "batch_limit_notes", "fit_profile", "load_measured", "sim_setup"]

# A closed loop's requests return in waves whose phase a replay cannot know: a window of
# fewer lifetimes than this measures where the waves happened to fall more than the GPU.
_MIN_LIFETIMES_IN_WINDOW = 1.5
# Errors a profile point lists besides those the fit weighs.
_REPORTED = ("j_per_output_token", "itl_ms_p50", "ttft_ms_p50", "avg_power_w")


@dataclass(frozen=True, kw_only=True)
class Measured:
    """A saved point: its bench result and what the fit reads from it."""

    result: BenchResult
    observation: Observation


def sim_setup(plan: CalibrationPlan) -> SimSetup:
    """The simulator the plan's points are replayed on; raises CalibrationError (one line)."""
    try:
        return SimSetup(
            arch=model_arch(plan.server.model), gpu=gpu_model(plan.gpu), server=plan.server
        )
    except ValueError as err:
        raise CalibrationError(f"the simulator cannot model this server: {err}") from None


def load_measured(plan: CalibrationPlan, out_dir: Path) -> list[Measured]:
    """Every plan point with a saved result, in plan order; raises CalibrationError on a
    file that is not a bench result."""
    measured = []
    for point in plan.points:
        path = point_path(out_dir, point)
        if not path.exists():
            continue
        try:
            result = BenchResult.model_validate_json(path.read_text())
        except (OSError, ValidationError) as err:
            raise CalibrationError(
                f"{path}: not a bench result: {str(err).splitlines()[0]}"
            ) from None
        rel = path.relative_to(out_dir).as_posix()
        obs = Observation.from_result(point, result, result_file=rel)
        measured.append(Measured(result=result, observation=obs))
    return measured


def batch_limit_notes(plan: CalibrationPlan, measured: Sequence[Measured]) -> list[str]:
    """One line per point where the server ran fewer requests than the replay would while
    others waited: its `--max-num-seqs` is likely not the plan's (or its KV cache held fewer),
    and a replay of the plan's setting would run a larger batch than was measured."""
    notes = []
    for m in measured:
        window = m.result.window
        if window is None or window.rule != "server-queue":
            continue
        batch = window.plateau_in_flight
        if batch < plan.server.max_num_seqs:
            notes.append(
                f"{m.observation.point.name}: the server ran at most {batch} requests while others "
                f"waited, where the replay runs up to max_num_seqs {plan.server.max_num_seqs}: if "
                f"it was started with --max-num-seqs {batch}, rerun with that and --fit-only (if "
                "its KV cache held only that many, with its --gpu-memory-utilization instead)"
            )
    return notes


def fit_profile(
    plan: CalibrationPlan,
    measured: Sequence[Measured],
    *,
    batch_only: bool,
    progress: Callable[[int, float], None] | None = None,
) -> GpuProfile:
    """Fit the simulated GPU to `measured` and describe the result as a profile.

    With `batch_only`, points under a power limit or clock lock are left out of the fit
    (their replay is still reported): the profile then says neither was measured.
    """
    setup = sim_setup(plan)
    used = [m.observation for m in measured if _excluded(m.observation, batch_only) is None]
    if not used:
        raise CalibrationError("no valid measurement to fit (see each point's line above)")
    base, idle_measured = _base_parameters(setup, used)
    try:
        fit = fit_parameters(
            setup, used, base=base, fitted=fitted_parameters(used), progress=progress
        )
    except ValueError as err:
        raise CalibrationError(str(err)) from None
    sources: dict[str, ParameterSource] = {
        name: "built-in" for name in ProfileParameters.model_fields
    }
    sources.update({name: "fitted" for name in fit.fitted})
    if idle_measured:
        sources["idle_loaded_w"] = "measured"
    return GpuProfile(
        gpu=plan.gpu,
        parameters=fit.parameters,
        sources=sources,
        power_limits_measured=any(o.point.power_limit_w is not None for o in used),
        clock_locks_measured=any(o.point.sm_clock_mhz is not None for o in used),
        provenance=_provenance(plan, measured, setup, batch_only=batch_only),
        points=_points(setup, measured, used, fit, batch_only),
        fit=fit.summary,
    )


def _excluded(obs: Observation, batch_only: bool) -> str | None:
    if obs.invalid_reason is not None:
        return obs.invalid_reason
    lifetimes = obs.lifetimes_in_window
    if lifetimes is not None and lifetimes < _MIN_LIFETIMES_IN_WINDOW:
        return (
            f"the window holds {lifetimes:.1f} request lifetimes; a closed loop's waves of "
            f"prefill average out over {_MIN_LIFETIMES_IN_WINDOW:g} or more (raise --duration)"
        )
    if batch_only and obs.point.changes_gpu:
        return "a power-limit or clock-lock point; a read-only fit uses the batch sweep only"
    return None


def _base_parameters(
    setup: SimSetup, used: Sequence[Observation]
) -> tuple[ProfileParameters, bool]:
    """The built-in parameters, with the loaded idle power measured before the runs."""
    base = builtin_parameters(setup.gpu, DEFAULT_PERF)
    idles = [o.idle_w for o in used if o.idle_w is not None and not o.point.changes_gpu]
    if not idles:
        return base, False
    return base.model_copy(update={"idle_loaded_w": statistics.median(idles)}), True


def _points(
    setup: SimSetup,
    measured: Sequence[Measured],
    used: Sequence[Observation],
    fit: FitResult,
    batch_only: bool,
) -> list[ProfilePoint]:
    observations = [m.observation for m in measured]
    used_ids = {id(o) for o in used}
    replays = dict(zip((id(o) for o in used), fit.predictions, strict=True))
    # Replay the left-out points too (a read-only fit's prediction of a capped point is a
    # held-out check); invalid ones have nothing to compare with.
    left_out = [o for o in observations if o.invalid_reason is None and id(o) not in used_ids]
    left_out_replays = predict(setup, fit.parameters, left_out)
    replays.update(zip((id(o) for o in left_out), left_out_replays, strict=True))
    points = []
    for obs in observations:
        predicted = replays.get(id(obs))
        errors = relative_errors(obs.measured, predicted)
        points.append(
            ProfilePoint(
                name=obs.point.name,
                concurrency=obs.concurrency,
                input_len=obs.point.workload.input_len,
                output_len=obs.point.workload.output_len,
                power_limit_w=obs.power_limit_w,
                sm_clock_lock_mhz=obs.point.sm_clock_mhz,
                result_file=obs.result_file,
                used_in_fit=id(obs) in used_ids,
                excluded_reason=_excluded(obs, batch_only),
                measured=obs.measured,
                predicted=predicted,
                errors={k: v for k, v in errors.items() if k in _REPORTED or weight(k, obs)},
            )
        )
    return points


def _provenance(
    plan: CalibrationPlan, measured: Sequence[Measured], setup: SimSetup, *, batch_only: bool
) -> Provenance:
    env = measured[0].result.environment
    gpu_count = max(len(measured[0].result.gpus), 1)
    return Provenance(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        jouletune_version=__version__,
        gpu_name=plan.gpu_name,
        gpu_count=gpu_count,
        driver_version=env.gpu_driver_version,
        engine_version=env.server_version,
        server_model=env.server_model,
        sim_model=setup.arch.hf_id,
        server_settings=plan.server.model_dump(exclude={"model", "served_model"}),
        workloads=[w.label for w in plan.workloads],
        base_url=plan.base_url,
        exporter_urls=list(plan.exporter_urls),
        read_only=plan.read_only or batch_only,
    )
