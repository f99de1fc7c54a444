"""One benchmark's control loop: trial pods in, results out, status written.

The loop is the only writer of a benchmark's `status`, and every step follows one order so
that a crash anywhere loses nothing and repeats nothing:

1. read the trial pods; tell the study each finished pod's result (or failure);
2. ask the study for new trials while fewer than `parallelTrials` run;
3. write the status — the trial table now names every running trial and every result;
4. only then create the new trials' pods and delete the finished ones.

A restarted operator rebuilds the study from the table (or from `spec.storage`): a trial
whose pod was never created gets it now (pod names are fixed per trial number, so a second
create is a conflict, not a second trial), and a pod whose result is already in the table is
only deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import kopf

from jouletune.operator._adopt import conclude, serve_args_of
from jouletune.operator._context import Context, trial_events
from jouletune.operator._harvest import Told, harvest
from jouletune.operator._pods import (
    LABEL_BENCHMARK,
    BenchmarkRef,
    benchmark_label,
    build_trial_pod,
    trial_plan,
    trial_pod_name,
)
from jouletune.operator._status import BenchmarkStatus, Condition, TrialRow, now_iso
from jouletune.operator._table import (
    COND_SPEC_VALID,
    Placement,
    build_status,
    count_trials,
    real_failures,
    set_failed,
)
from jouletune.tuner import (
    Baseline,
    BaselineError,
    BenchmarkSpec,
    SpecError,
    StorageError,
    Study,
    StudyMismatchError,
    TrialOutcome,
    TrialPlan,
    TrialRecord,
    TrialState,
    open_storage,
    parse_spec,
    recommend,
    resolve_baseline,
)
from jouletune.tuner import Phase as StudyPhase

__all__ = ["BenchmarkLoop"]

# Most points one trial pod measures under one engine start: the plan's and its riders'
# (power steps). Four fit the termination message with room to spare.
_MAX_POINTS_PER_POD = 4


class _Terminal(Exception):
    """The benchmark reached a terminal phase; the loop ends."""


class BenchmarkLoop:
    """The control loop of one EnergyBenchmark.

    Args:
        ctx: the operator's shared context.
        body: the benchmark as Kopf sees it (a live view: it follows the watch stream).
        logger: Kopf's per-object logger.
    """

    def __init__(self, *, ctx: Context, body: Mapping[str, Any], logger: Any) -> None:
        meta = body["metadata"]
        self._ctx = ctx
        self._body = body
        self._log = logger
        self.ref = BenchmarkRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
        self._status = _read_status(body.get("status"), logger)
        self._placements = {
            row.number: Placement(row.pod, row.started_at, row.finished_at, row.reason)
            for row in self._status.trials
        }
        self._spec: BenchmarkSpec | None = None
        self._study: Study | None = None
        self._written = False  # whether this process has written the status yet
        self._closing = False  # the benchmark is being deleted: start no more pods

    def close(self) -> None:
        """Start no more trial pods (the benchmark is being deleted)."""
        self._closing = True

    def closing(self) -> bool:
        """True once `close()` was called (which may happen during any await)."""
        return self._closing

    @property
    def status(self) -> BenchmarkStatus:
        """The status as last written."""
        return self._status

    async def run(self) -> None:
        """Step until the benchmark ends (or the task is cancelled by Kopf)."""
        if self._finished():
            return
        wakeup = self._ctx.wakeup(self.ref.namespace, self.ref.name)
        while True:
            wakeup.clear()
            try:
                await self.step()
            except _Terminal:
                return
            except _Fatal as fatal:
                await self.fail(fatal)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self._ctx.config.reconcile_interval_s)

    async def step(self) -> None:
        """One pass: harvest finished pods, start new trials, write status, then touch pods.

        Raises:
            _Terminal: the benchmark has reached Succeeded or Failed.
        """
        if (self._body.get("metadata") or {}).get("deletionTimestamp"):
            raise _Terminal()
        spec = self._load_spec()
        study = await self._load_study(spec)
        pods = await self._trial_pods()
        finished = self._harvest(study, pods)
        failed = real_failures(study.records())
        if failed >= spec.budget.max_failed_trials:
            await self._abort(study, pods, failed, spec)
        self._ask(study, spec)
        records = study.records()
        running = [r for r in records if r.state is TrialState.RUNNING]
        done = not running and study.phase() == StudyPhase.DONE
        rec = recommend(
            spec=spec,
            records=records,
            finalists=study.finalists(),
            done=done,
            baseline_source=study.baseline.source,
        )
        status = build_status(
            self._status,
            benchmark=self.ref.name,
            spec=spec,
            records=records,
            placements=self._placements,
            recommendation=rec,
            generation=self._body["metadata"].get("generation"),
        )
        if done:
            await conclude(
                kube=self._ctx.kube,
                ref=self.ref,
                spec=spec,
                rec=rec,
                status=status,
                event=self._event,
                settings=self._ctx.config,
            )
        await self._write(status)
        await self._start_pods(study, spec, running, pods)
        await self._delete_pods(finished + self._orphans(pods, running))
        if status.phase.terminal:
            raise _Terminal()

    # --- spec and study -----------------------------------------------------------------

    def _finished(self) -> bool:
        """Succeeded and Failed are final: a benchmark is re-run by re-creating it (the CEL
        rules forbid changing what defines the study, and a new budget alone would mix a
        finished recommendation with new trials)."""
        return self._status.phase.terminal

    def _load_spec(self) -> BenchmarkSpec:
        try:
            spec = parse_spec(self._body.get("spec"))
        except SpecError as err:
            raise _Fatal("SpecInvalid", str(err).replace("\n", "; ")) from None
        if self._spec is not None and spec != self._spec:
            self._study = None  # budget or adoption changed: rebuild with the new spec
        self._spec = spec
        return spec

    async def _load_study(self, spec: BenchmarkSpec) -> Study:
        if self._study is not None:
            return self._study
        name = f"{self.ref.namespace}.{self.ref.name}.{self.ref.uid}"
        baseline = await self._baseline(spec)
        try:
            if spec.storage:
                storage = await asyncio.to_thread(open_storage, spec.storage)
                self._study = await asyncio.to_thread(
                    Study.open, spec=spec, name=name, storage=storage, baseline=baseline
                )
            else:
                records = [row.to_record() for row in sorted(self._status.trials, key=_number)]
                self._study = Study.from_records(
                    spec=spec, records=records, name=name, baseline=baseline
                )
        except StorageError as err:
            # The database may come back; Kopf restarts the daemon after a backoff.
            raise kopf.TemporaryError(f"study storage: {err}", delay=30.0) from None
        except StudyMismatchError as err:
            raise _Fatal("StudyMismatch", str(err)) from None
        except ValueError as err:
            raise _Fatal("StatusInconsistent", f"cannot rebuild the study: {err}") from None
        return self._study

    async def _baseline(self, spec: BenchmarkSpec) -> Baseline:
        """The server the user runs today: `baseline.serveArgs`, or the adoption target's
        container args, with the engine's defaults for the spec's GPU for the rest."""
        target = spec.adopt.target_ref
        try:
            if not spec.baseline.from_target or target is None:
                return resolve_baseline(spec, defaults=None)
            deployment = await self._ctx.kube.get_deployment(self.ref.namespace, target.name)
            if deployment is None:
                raise _Fatal("TargetNotFound", f"baseline.fromTarget: no Deployment {target.name}")
            args = serve_args_of(deployment, target.container or "vllm")
            return resolve_baseline(spec, defaults=None, serve_args=args)
        except (BaselineError, ValueError) as err:
            raise _Fatal("BaselineUnknown", str(err)) from None

    # --- trials -------------------------------------------------------------------------

    async def _trial_pods(self) -> dict[str, dict[str, Any]]:
        labels = {LABEL_BENCHMARK: benchmark_label(self.ref.name)}
        pods = await self._ctx.kube.list_pods(self.ref.namespace, labels=labels)
        return {p["metadata"]["name"]: p for p in pods if _owned_by(p, self.ref.uid)}

    def _harvest(self, study: Study, pods: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Tell the study every finished pod's outcome; return the pods to delete."""
        assert self._spec is not None, "spec is loaded first"
        told, finished = harvest(
            study,
            pods,
            benchmark=self.ref.name,
            spec=self._spec,
            config=self._ctx.config,
            placements=self._placements,
        )
        for trial in told:
            self._observe(trial)
        return finished

    def _observe(self, told: Told) -> None:
        """Metrics and the Event of one told trial."""
        record = told.record
        if record.figures is not None:
            self._ctx.metrics.observe_figures(
                self.ref.namespace,
                self.ref.name,
                trial=record.number,
                figures=record.figures,
                held_back_by=record.held_back_by,
            )
        self._ctx.metrics.observe_trial(
            self.ref.namespace,
            self.ref.name,
            state=record.state,
            duration_s=told.duration_s,
            reason=told.placement.reason,
        )
        self._event_trial_end(record, told.placement)

    def _ask(self, study: Study, spec: BenchmarkSpec) -> None:
        running = sum(r.state is TrialState.RUNNING for r in study.records())
        while running < spec.budget.parallel_trials:
            plan = study.ask()
            if plan is None:
                return
            self._placements[plan.number] = Placement(
                pod=trial_pod_name(self.ref.name, plan.number), started_at=now_iso()
            )
            running += 1

    async def _abort(
        self,
        study: Study,
        pods: Mapping[str, Mapping[str, Any]],
        failed: int,
        spec: BenchmarkSpec,
    ) -> None:
        message = (
            f"{failed} trials failed (spec.budget.maxFailedTrials={spec.budget.max_failed_trials})"
        )
        for record in study.records():
            if record.state is TrialState.RUNNING:
                study.tell(record.number, TrialOutcome(fail_reason=f"Aborted: {message}"))
                placement = self._placements.setdefault(record.number, Placement())
                placement.finished_at, placement.reason = now_iso(), "Aborted"
        raise _Fatal("MaxFailedTrialsReached", message, delete=list(pods))

    async def _start_pods(
        self,
        study: Study,
        spec: BenchmarkSpec,
        running: list[TrialRecord],
        pods: Mapping[str, Mapping[str, Any]],
    ) -> None:
        for record in running:
            name = trial_pod_name(self.ref.name, record.number)
            if name in pods or self.closing():
                continue
            plan = TrialPlan(number=record.number, role=record.role, point=record.point)
            riders = study.riders(plan, limit=_MAX_POINTS_PER_POD - 1)
            body = build_trial_pod(
                ref=self.ref,
                plan=trial_plan(
                    ref=self.ref,
                    spec=spec,
                    number=record.number,
                    role=record.role,
                    points=[record.point, *riders],
                    caps=list(study.grid.power_limits_w),
                    clocks=list(study.grid.sm_clocks_mhz),
                    walk=study.walks(),
                ),
                settings=self._ctx.config,
            )
            created = await self._ctx.kube.create_pod(self.ref.namespace, body)
            if self.closing():
                # Deleted while the create was in flight: the deletion handler may have
                # listed the pods before this one existed.
                await self._ctx.kube.delete_pod(self.ref.namespace, name)
                return
            if created:
                more = f" and {len(riders)} lower cap(s)" if riders else ""
                self._event(
                    "Normal",
                    "TrialStarted",
                    f"trial {record.number} ({record.role.value}): "
                    f"{record.point.label()}{more} in pod {name}",
                )

    async def _delete_pods(self, names: list[str]) -> None:
        for name in dict.fromkeys(names):
            await self._ctx.kube.delete_pod(self.ref.namespace, name)

    def _orphans(
        self, pods: Mapping[str, Mapping[str, Any]], running: list[TrialRecord]
    ) -> list[str]:
        """Pods of this benchmark no running trial owns (their result is already in)."""
        wanted = {trial_pod_name(self.ref.name, r.number) for r in running}
        return [name for name in pods if name not in wanted]

    # --- status -------------------------------------------------------------------------

    async def _write(self, status: BenchmarkStatus) -> None:
        generation = self._body["metadata"].get("generation")
        status.conditions = [
            c.model_copy(update={"observed_generation": generation}) for c in status.conditions
        ]
        if status == self._status and self._written:
            return  # nothing changed: no write, no watch event, no wake-up elsewhere
        await self._ctx.kube.patch_status(self.ref.namespace, self.ref.name, status.to_wire())
        self._status = status
        self._written = True
        self._ctx.metrics.observe_status(self.ref.namespace, self.ref.name, status)

    async def fail(self, fatal: _Fatal) -> None:
        """Write a terminal Failed status, and delete the pods the failure names."""
        status = self._status.model_copy(deep=True)
        if self._study is not None and self._spec is not None:
            count_trials(
                status,
                benchmark=self.ref.name,
                spec=self._spec,
                records=self._study.records(),
                placements=self._placements,
            )
        if fatal.reason == "SpecInvalid":
            status.set_condition(
                Condition(
                    type=COND_SPEC_VALID, status="False", reason=fatal.reason, message=fatal.message
                )
            )
        set_failed(status, fatal.reason, fatal.message)
        status.observed_generation = self._body["metadata"].get("generation")
        await self._write(status)
        await self._delete_pods(fatal.delete)
        self._event("Warning", fatal.reason, fatal.message)

    # --- events -------------------------------------------------------------------------

    def _event_trial_end(self, record: TrialRecord, placement: Placement) -> None:
        assert self._spec is not None, "spec is loaded first"
        for event in trial_events(record, placement.reason, self._spec):
            self._event(*event)

    def _event(self, type_: str, reason: str, message: str) -> None:
        body = {
            "apiVersion": self._body.get("apiVersion"),
            "kind": self._body.get("kind"),
            "metadata": {
                "name": self.ref.name,
                "namespace": self.ref.namespace,
                "uid": self.ref.uid,
            },
        }
        self._ctx.events(body, type=type_, reason=reason, message=message[:1000])


class _Fatal(Exception):
    """The benchmark cannot go on: it becomes Failed with this reason."""

    def __init__(self, reason: str, message: str, *, delete: list[str] | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.delete = delete or []


def _read_status(raw: Any, logger: Any) -> BenchmarkStatus:
    try:
        return BenchmarkStatus.model_validate(raw or {})
    except ValueError as err:
        # An unreadable status (hand-edited?) is rebuilt from scratch rather than fatal; its
        # trials will be measured again, so say so loudly.
        logger.error("status unreadable, starting the study afresh: %s", str(err)[:500])
        return BenchmarkStatus()


def _number(row: TrialRow) -> int:
    return row.number


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("uid") == uid for o in owners)
