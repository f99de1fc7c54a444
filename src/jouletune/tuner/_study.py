"""The search core: an Optuna study driven by ask/tell, with the measurement plan around it.

One `Study` serves both front doors. The CLI loops `ask()` → run → `tell()`; the operator
asks when it can start a pod and tells when the pod's result arrives, possibly from another
process, since every piece of state lives in Optuna's storage (or is rebuilt from records).

The plan around Optuna's sampler, each step derived from the records (so a resumed study
goes on where it stopped):
1. the baseline (vLLM defaults, no cap) is measured first;
2. a trial interrupted by a crash is measured again;
3. the SLO boundary search (`_boundary`): bisection over max_num_seqs, then a walk along the
   boundary, lowering power caps, then SM clock locks, under a running server (no restart)
   while that pays;
4. the power (or clock) step under the latest point's server, once the boundary is bracketed;
5. then the sampler explores; a point it proposes again is answered from its first
   measurement instead of being measured twice;
6. when the budget is spent, up to `_MAX_FINALISTS` of the lowest-energy feasible points, the
   baseline, and each capped or locked finalist without its cap or lock (for the cap report),
   are measured `finalistRepeats` more times.
`sampler: grid` skips 3-5 and measures every point, server by server.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.trial import FrozenTrial, create_trial
from optuna.trial import TrialState as OptunaState

from jouletune.tuner import _optuna
from jouletune.tuner._baseline import Baseline, resolve_baseline
from jouletune.tuner._boundary import (
    brackets_closed,
    gpu_ladders,
    next_boundary_point,
    next_gpu_step,
    rungs_below,
)
from jouletune.tuner._finalists import finalist_points, next_finalist
from jouletune.tuner._point import Point
from jouletune.tuner._records import Role, TrialOutcome, TrialPlan, TrialRecord, TrialState
from jouletune.tuner._space import SearchGrid
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["Phase", "Study", "StudyMismatchError"]

# The sampler may propose a measured point again; after this many in a row the space near its
# optimum is exhausted and an unmeasured point is picked at random instead.
_MAX_DUPLICATE_ASKS = 20

_ATTR_SPEC = "spec_fingerprint"


class Phase:
    """Where a study stands: what its next `ask()` will hand out."""

    SEARCH = "search"
    FINALISTS = "finalists"
    DONE = "done"


class StudyMismatchError(ValueError):
    """The storage holds a study of this name that was run with a different search spec."""


@dataclass(frozen=True, kw_only=True)
class _Counts:
    measured: int  # baseline and search trials measured, running or queued (the budget's unit)
    failed: int
    running: int


class Study:
    """An energy/latency study over a spec's search space (ask/tell).

    Build with `Study.open(...)` (a storage URL or Optuna storage) or `Study.from_records(...)`.
    `baseline` is the configuration the user runs today (`resolve_baseline`; by default the
    engine's defaults for the spec's GPU).
    """

    def __init__(
        self,
        *,
        spec: BenchmarkSpec,
        optuna_study: optuna.Study,
        read_only: bool = False,
        baseline: Baseline | None = None,
    ) -> None:
        self._spec = spec
        self.baseline = baseline or resolve_baseline(spec, defaults=None)
        self._grid = SearchGrid(
            spec=spec, baseline=self.baseline.point, read_only=read_only or spec.gpu.read_only
        )
        self._read_only = read_only or spec.gpu.read_only
        self._ladders = gpu_ladders(self._grid.power_limits_w, self._grid.sm_clocks_mhz)
        self._distributions = self._grid.distributions()
        self._study = optuna_study
        self._rng = random.Random(spec.seed)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        spec: BenchmarkSpec,
        name: str,
        storage: str | BaseStorage,
        read_only: bool = False,
        baseline: Baseline | None = None,
    ) -> Study:
        """Create the study `name` in `storage`, or load it to resume.

        Raises:
            StudyMismatchError: the stored study was run with another search spec.
        """
        optuna_study = optuna.create_study(
            storage=storage,
            study_name=name,
            directions=["minimize", "minimize"],
            sampler=_optuna.sampler(spec),
            load_if_exists=True,
        )
        study = cls(spec=spec, optuna_study=optuna_study, read_only=read_only, baseline=baseline)
        study._claim()
        return study

    @classmethod
    def from_records(
        cls,
        *,
        spec: BenchmarkSpec,
        records: Iterable[TrialRecord],
        name: str = "jouletune",
        read_only: bool = False,
        baseline: Baseline | None = None,
    ) -> Study:
        """Rebuild a study in memory from records (e.g. those an operator kept in a status).

        Records must be every trial in number order, as `records()` returns them; numbers
        are kept, so `tell()` by number keeps working for records still running.
        """
        optuna_study = optuna.create_study(
            storage=InMemoryStorage(),
            study_name=name,
            directions=["minimize", "minimize"],
            sampler=_optuna.sampler(spec),
        )
        study = cls(spec=spec, optuna_study=optuna_study, read_only=read_only, baseline=baseline)
        for expected, record in enumerate(records):
            if record.number != expected:
                raise ValueError(f"records must be numbered 0.. in order: {record.number=}")
            optuna_study.add_trial(
                _optuna.frozen_trial(
                    record, distributions=study._distributions, objective=spec.objective
                )
            )
        study._claim()
        return study

    # --- the ask/tell API ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The study's name in its storage."""
        return self._study.study_name

    @property
    def grid(self) -> SearchGrid:
        """The search space."""
        return self._grid

    @property
    def optuna_study(self) -> optuna.Study:
        """The underlying Optuna study (for dashboards and plots; do not ask/tell on it)."""
        return self._study

    def phase(self) -> str:
        """SEARCH while the budget lasts, FINALISTS while repeats remain, then DONE."""
        if not self._search_over():
            return Phase.SEARCH
        if self._next_finalist() is not None or self._count().running:
            return Phase.FINALISTS
        return Phase.DONE

    def ask(self) -> TrialPlan | None:
        """The next measurement to run; None when nothing can run now.

        None with `phase() == DONE` means the study is finished; otherwise trials still
        running must be told first (their results decide what comes next).
        """
        if not self._search_over():
            plan = self._ask_search()
            if plan is not None:
                return plan
        if self._search_running():
            return None
        point_repeat = self._next_finalist()
        if point_repeat is None:
            return None
        point, repeat = point_repeat
        return self._ask_point(point, role=Role.FINALIST, repeat=repeat)

    def tell(self, plan: TrialPlan | int, outcome: TrialOutcome) -> TrialRecord:
        """Record what a runner measured for `plan` (or its trial number); return the record."""
        number = plan if isinstance(plan, int) else plan.number
        trial = self._live_trial(number)
        record = self._record(self._study.get_trials(deepcopy=False)[number]).finished(
            outcome, slos=self._spec.slos, objective=self._spec.objective
        )
        self._store(trial, record)
        return record

    def tell_extra(self, point: Point, outcome: TrialOutcome, *, role: Role) -> TrialRecord:
        """Record a measurement nobody asked for: a point a trial pod measured under the server
        of a plan it was given (`riders`)."""
        plan = self._ask_point(point, role=role)
        return self.tell(plan, outcome)

    def riders(self, plan: TrialPlan, *, limit: int) -> list[Point]:
        """Points a trial pod may measure after `plan` without restarting its server, in order.

        What the CLI would measure next under the same server start: for a search trial once
        the boundary is bracketed, the lower power caps not yet taken, highest first, then
        the SM clock locks, highest first (the pod walks down them as the CLI's power and
        clock steps do, `measure_sweep`); with `sampler: grid`, the next unmeasured points of
        its server. At most `limit`, and no more than the budget has left. A rider the pod
        measured comes back through `tell_extra`.
        """
        if plan.role is not Role.SEARCH:
            return []
        records = self.records()
        grid = self._spec.sampler == "grid"
        if not grid and not brackets_closed(records, self._grid):
            return []
        taken = _taken_points(records)
        if grid:
            server = [p for p in self._grid.points() if p.server == plan.point.server]
            after = server[server.index(plan.point) + 1 :]
        else:
            after = rungs_below(plan.point, self._ladders)
        left = self._spec.budget.max_trials - self._count().measured
        return [p for p in after if p not in taken][: max(0, min(limit, left))]

    def walks(self) -> bool:
        """True when a pod's riders end where the power walk would (`measure_sweep`'s walk);
        False for the grid, which measures every point."""
        return self._spec.sampler != "grid"

    def abandon_running(self, reason: str = "interrupted before it finished") -> list[int]:
        """Fail every running trial (its process died); the next asks measure them again.

        Only the study's single owner may call this (the CLI at start-up): an operator's
        running trials are pods that may still report.
        """
        abandoned = []
        for frozen in self._study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
            record = self._record(frozen).model_copy(
                update={"state": TrialState.FAILED, "interrupted": True, "fail_reason": reason}
            )
            self._store(self._live_trial(frozen.number), record)
            abandoned.append(frozen.number)
        return abandoned

    def records(self) -> list[TrialRecord]:
        """Every trial, in number order (duplicates and interrupted ones included)."""
        return [self._record(t) for t in self._study.get_trials(deepcopy=False)]

    def measured(self) -> list[TrialRecord]:
        """Trials that ran to an end: no duplicates, no interrupted or running ones."""
        return [r for r in self.records() if r.measured]

    # --- search phase -------------------------------------------------------------------

    def _ask_search(self) -> TrialPlan | None:
        """Baseline, then an interrupted point, then a power step, then the sampler."""
        records = self.records()
        if not any(r.role is Role.BASELINE and not r.interrupted for r in records):
            return self._ask_point(self._grid.baseline, role=Role.BASELINE)
        taken = _taken_points(records)
        for record in records:
            if record.interrupted and record.role is Role.SEARCH and record.point not in taken:
                return self._ask_point(record.point, role=Role.SEARCH)
        if self._spec.sampler == "grid":
            unmeasured = self._unmeasured_points(taken)
            return self._ask_point(unmeasured[0], role=Role.SEARCH) if unmeasured else None
        step = self._gpu_step(records) if brackets_closed(records, self._grid) else None
        if step is None:
            step = next_boundary_point(records, self._grid)
        if step is not None and step not in taken:
            return self._ask_point(step, role=Role.SEARCH)
        return self._ask_sampler()

    def _ask_sampler(self) -> TrialPlan | None:
        for _ in range(_MAX_DUPLICATE_ASKS):
            trial = self._study.ask(fixed_distributions=self._distributions)
            trial.set_user_attr(_optuna.RECORD_ATTR, _optuna.running_attrs(Role.SEARCH))
            point = Point.from_params(trial.params)
            earlier = self._earlier_measurement(point, before=trial.number)
            if earlier is None:
                return TrialPlan(number=trial.number, role=Role.SEARCH, point=point)
            self._answer_duplicate(trial, earlier)
        unmeasured = self._unmeasured_points(_taken_points(self.records()))
        if not unmeasured:
            return None
        return self._ask_point(self._rng.choice(unmeasured), role=Role.SEARCH)

    def _ask_point(self, point: Point, *, role: Role, repeat: int = 0) -> TrialPlan:
        """Start a trial at a point the plan chose (not the sampler)."""
        # A RUNNING trial added directly: enqueue_trial would leave a WAITING trial behind
        # if the process died between enqueue and ask.
        self._study.add_trial(
            create_trial(
                state=OptunaState.RUNNING,
                params=point.params(),
                distributions=self._distributions,
                user_attrs={_optuna.RECORD_ATTR: _optuna.running_attrs(role, repeat)},
            )
        )
        number = len(self._study.get_trials(deepcopy=False)) - 1
        return TrialPlan(number=number, role=role, point=point, repeat=repeat)

    def _answer_duplicate(self, trial: optuna.Trial, earlier: FrozenTrial) -> None:
        """Answer a re-proposed point from its first measurement, so the sampler learns."""
        first = self._record(earlier)
        record = first.model_copy(
            update={
                "number": trial.number,
                "role": Role.SEARCH,
                "repeat": 0,
                "duplicate_of": earlier.number,
                "server_start_s": None,
                "duration_s": 0.0,
            }
        )
        if first.state is TrialState.RUNNING:
            record = record.model_copy(update={"state": TrialState.FAILED})
        self._store(trial, record)

    def _earlier_measurement(self, point: Point, *, before: int) -> FrozenTrial | None:
        """The first search trial of `point` that is measured or running."""
        for record in self.records()[:before]:
            if record.point == point and _in_budget(record):
                return self._study.get_trials(deepcopy=False)[record.number]
        return None

    def _unmeasured_points(self, taken: set[Point]) -> list[Point]:
        return [p for p in self._grid.points() if p not in taken]

    def _gpu_step(self, records: Sequence[TrialRecord]) -> Point | None:
        """The next cap or clock lock under the server of the latest measured search trial, if
        any is worth measuring: it needs no restart, so it is the cheapest informative
        measurement."""
        finished = [r for r in records if r.measured and r.role is not Role.FINALIST]
        if not finished or finished[-1].state is not TrialState.COMPLETE:
            return None
        latest = finished[-1]
        same_server = [r for r in finished if r.point.server == latest.point.server]
        return next_gpu_step(latest, same_server, self._ladders)

    # --- finalists ----------------------------------------------------------------------

    def finalists(self) -> list[Point]:
        """The points re-measured before a recommendation: the baseline first, then up to
        three lowest-energy feasible points (by their search measurements), then the capped
        or locked ones' twins without the cap or lock (`finalist_points`)."""
        return finalist_points(self.measured(), baseline=self._grid.baseline)

    def _next_finalist(self) -> tuple[Point, int] | None:
        return next_finalist(
            self.records(), self.finalists(), repeats=self._spec.budget.finalist_repeats
        )

    # --- bookkeeping --------------------------------------------------------------------

    def _search_over(self) -> bool:
        counts = self._count()
        budget = self._spec.budget
        if counts.failed >= budget.max_failed_trials:
            return True
        if counts.measured >= budget.max_trials:
            return True
        # Every point measured: the space is exhausted.
        return not self._unmeasured_points(_taken_points(self.records()))

    def _search_running(self) -> bool:
        return any(
            r.state is TrialState.RUNNING and r.role is not Role.FINALIST for r in self.records()
        )

    def _count(self) -> _Counts:
        measured = failed = running = 0
        for record in self.records():
            if not _in_budget(record):
                running += record.state is TrialState.RUNNING
                continue
            measured += 1
            failed += record.state is TrialState.FAILED
            running += record.state is TrialState.RUNNING
        return _Counts(measured=measured, failed=failed, running=running)

    def _live_trial(self, number: int) -> optuna.Trial:
        frozen = self._study.get_trials(deepcopy=False)[number]
        if frozen.state is not OptunaState.RUNNING:
            raise ValueError(f"trial {number} is {frozen.state.name.lower()}, not running")
        # NOTE: Optuna's Trial is built from the storage id; FrozenTrial keeps it privately.
        return optuna.Trial(self._study, frozen._trial_id)

    def _claim(self) -> None:
        fingerprint = _optuna.fingerprint(
            self._spec, read_only=self._read_only, baseline=self._grid.baseline
        )
        stored = self._study.user_attrs.get(_ATTR_SPEC)
        if stored is None:
            self._study.set_user_attr(_ATTR_SPEC, fingerprint)
        elif stored != fingerprint:
            raise StudyMismatchError(
                f"study {self.name!r} in this storage was run with a different search spec "
                "(model, engine, GPUs, space, workload or SLOs); use another --out or --storage"
            )

    def _record(self, frozen: FrozenTrial) -> TrialRecord:
        return _optuna.record_of(frozen)

    def _store(self, trial: optuna.Trial, record: TrialRecord) -> None:
        """Write a finished record into its live Optuna trial and end that trial."""
        trial.set_user_attr(_optuna.RECORD_ATTR, _optuna.record_attrs(record))
        if record.state is not TrialState.COMPLETE:
            self._study.tell(trial, state=OptunaState.FAIL)
            return
        for key, value in _optuna.constraints(record).items():
            trial.set_constraint(key, value)
        self._study.tell(trial, _optuna.values(record, self._spec.objective))


def _in_budget(record: TrialRecord) -> bool:
    """Baseline and search trials count against `maxTrials`; repeats, duplicates and
    interrupted trials do not."""
    return (
        record.role is not Role.FINALIST and not record.interrupted and record.duplicate_of is None
    )


def _taken_points(records: Iterable[TrialRecord]) -> set[Point]:
    """Points the search measured or is measuring (finalist repeats aside)."""
    return {r.point for r in records if _in_budget(r)}
