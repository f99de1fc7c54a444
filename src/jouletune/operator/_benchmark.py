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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf

from jouletune.operator._adopt import configmap_name, deployment_patch, recommendation_configmap
from jouletune.operator._config import OperatorConfig
from jouletune.operator._kube import KubeApi
from jouletune.operator._metrics import OperatorMetrics
from jouletune.operator._outcome import PodOutcome, Timeouts, classify_pod, parse_time_s
from jouletune.operator._pods import (
    LABEL_BENCHMARK,
    BenchmarkRef,
    benchmark_label,
    build_trial_pod,
    trial_pod_name,
)
from jouletune.operator._status import (
    BenchmarkStatus,
    Condition,
    FrontPoint,
    Phase,
    Recommendation,
    TrialConfig,
    TrialRow,
    TrialState,
    now_iso,
)
from jouletune.tuner import (
    BenchmarkSpec,
    PointSummary,
    SpecError,
    StorageError,
    Study,
    StudyMismatchError,
    TrialOutcome,
    TrialRecord,
    front,
    open_storage,
    parse_spec,
    recommend,
    summarize_points,
)
from jouletune.tuner import Phase as StudyPhase
from jouletune.tuner import Recommendation as TunerRecommendation
from jouletune.tuner import TrialState as RecordState

__all__ = ["BenchmarkLoop", "Context", "EventSink"]

# Condition types of status.conditions.
COND_SPEC_VALID = "SpecValid"
COND_PROGRESSING = "Progressing"
COND_COMPLETE = "Complete"
COND_FAILED = "Failed"
COND_ADOPTED = "Adopted"


class EventSink(Protocol):
    """Posts Kubernetes Events about a benchmark (Kopf's `kopf.event` in the operator)."""

    def __call__(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """Post one event."""


def kopf_events(body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
    """Post through Kopf's event queue (batched, rate-limited by Kopf)."""
    kopf.event(body, type=type, reason=reason, message=message)  # type: ignore[arg-type]


@dataclass
class Context:
    """What every benchmark loop of one operator shares."""

    kube: KubeApi
    config: OperatorConfig
    metrics: OperatorMetrics
    events: EventSink = kopf_events
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    def wakeup(self, namespace: str, name: str) -> asyncio.Event:
        """The event a pod change sets to wake this benchmark's loop."""
        return self.wakeups.setdefault((namespace, name), asyncio.Event())


@dataclass
class _Placement:
    """What the table says about a trial beyond the study's record."""

    pod: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = None


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
        self._status = _read_status(body.get("status"))
        self._placements = {
            row.number: _Placement(row.pod, row.started_at, row.finished_at, row.reason)
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
        failed = _real_failures(study.records())
        if failed >= spec.budget.max_failed_trials:
            await self._abort(study, pods, failed, spec)
        self._ask(study, spec)
        records = study.records()
        running = [r for r in records if r.state is RecordState.RUNNING]
        done = not running and study.phase() == StudyPhase.DONE
        tuner_rec = recommend(spec=spec, records=records, finalists=study.finalists(), done=done)
        status = self._build_status(spec, records, tuner_rec)
        if done:
            await self._finish(spec, tuner_rec, status)
        await self._write(status)
        await self._start_pods(spec, running, pods)
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
        try:
            if spec.storage:
                storage = await asyncio.to_thread(open_storage, spec.storage)
                self._study = await asyncio.to_thread(
                    Study.open, spec=spec, name=name, storage=storage
                )
            else:
                records = [row.to_record() for row in sorted(self._status.trials, key=_number)]
                self._study = Study.from_records(spec=spec, records=records, name=name)
        except StorageError as err:
            # The database may come back; Kopf restarts the daemon after a backoff.
            raise kopf.TemporaryError(f"study storage: {err}", delay=30.0) from None
        except StudyMismatchError as err:
            raise _Fatal("StudyMismatch", str(err)) from None
        except ValueError as err:
            raise _Fatal("StatusInconsistent", f"cannot rebuild the study: {err}") from None
        return self._study

    # --- trials -------------------------------------------------------------------------

    async def _trial_pods(self) -> dict[str, dict[str, Any]]:
        labels = {LABEL_BENCHMARK: benchmark_label(self.ref.name)}
        pods = await self._ctx.kube.list_pods(self.ref.namespace, labels=labels)
        return {p["metadata"]["name"]: p for p in pods if _owned_by(p, self.ref.uid)}

    def _harvest(self, study: Study, pods: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Tell the study every finished pod's outcome; return the pods to delete."""
        spec = self._spec
        assert spec is not None, "spec is loaded first"
        timeouts = Timeouts(
            unschedulable_s=self._ctx.config.unschedulable_timeout_s,
            trial_s=spec.engine.startup_timeout_s
            + spec.budget.trial_timeout_s
            + self._ctx.config.trial_grace_s,
        )
        now_s = time.time()
        done = []
        for record in study.records():
            if record.state is not RecordState.RUNNING:
                continue
            pod = pods.get(trial_pod_name(self.ref.name, record.number))
            if pod is None:
                continue
            outcome = classify_pod(pod, now_s=now_s, timeouts=timeouts)
            if outcome.state == "running":
                continue
            self._tell(study, record, outcome, pod)
            done.append(pod["metadata"]["name"])
        return done

    def _tell(
        self, study: Study, record: TrialRecord, outcome: PodOutcome, pod: Mapping[str, Any]
    ) -> None:
        placement = self._placements.setdefault(record.number, _Placement())
        started_s = parse_time_s(placement.started_at) or parse_time_s(
            pod["metadata"].get("creationTimestamp")
        )
        duration_s = 0.0 if started_s is None else time.time() - started_s
        if outcome.state == "done":
            assert outcome.result is not None, "a done outcome carries its result"
            self._ctx.metrics.observe_result(
                self.ref.namespace, self.ref.name, trial=record.number, result=outcome.result
            )
            told = study.tell(
                record.number,
                TrialOutcome(
                    result=outcome.result.as_bench_result(),
                    duration_s=duration_s,
                    power_limit_w=outcome.result.power_limit_w,
                ),
            )
        else:
            told = study.tell(
                record.number,
                TrialOutcome(
                    fail_reason=f"{outcome.reason}: {outcome.message}", duration_s=duration_s
                ),
            )
        placement.finished_at = now_iso()
        if told.state is RecordState.FAILED:
            # A result the study could not use fails too; keep the pod's word when it had one.
            placement.reason = outcome.reason or "InvalidResult"
        state = TrialState.COMPLETE if told.state is RecordState.COMPLETE else TrialState.FAILED
        self._ctx.metrics.observe_trial(
            self.ref.namespace,
            self.ref.name,
            state=state,
            duration_s=duration_s,
            reason=placement.reason,
        )
        self._event_trial_end(told, placement)

    def _ask(self, study: Study, spec: BenchmarkSpec) -> None:
        running = sum(r.state is RecordState.RUNNING for r in study.records())
        while running < spec.budget.parallel_trials:
            plan = study.ask()
            if plan is None:
                return
            self._placements[plan.number] = _Placement(
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
            if record.state is RecordState.RUNNING:
                study.tell(record.number, TrialOutcome(fail_reason=f"Aborted: {message}"))
                placement = self._placements.setdefault(record.number, _Placement())
                placement.finished_at, placement.reason = now_iso(), "Aborted"
        raise _Fatal("MaxFailedTrialsReached", message, delete=list(pods))

    async def _start_pods(
        self,
        spec: BenchmarkSpec,
        running: list[TrialRecord],
        pods: Mapping[str, Mapping[str, Any]],
    ) -> None:
        for record in running:
            name = trial_pod_name(self.ref.name, record.number)
            if name in pods or self.closing():
                continue
            config = TrialConfig.from_point(record.point)
            body = build_trial_pod(
                ref=self.ref,
                spec=spec,
                number=record.number,
                config=config,
                settings=self._ctx.config,
            )
            created = await self._ctx.kube.create_pod(self.ref.namespace, body)
            if self.closing():
                # Deleted while the create was in flight: the deletion handler may have
                # listed the pods before this one existed.
                await self._ctx.kube.delete_pod(self.ref.namespace, name)
                return
            if created:
                self._event(
                    "Normal",
                    "TrialStarted",
                    f"trial {record.number} ({record.role.value}): "
                    f"{record.point.label()} in pod {name}",
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

    # --- the end ------------------------------------------------------------------------

    async def _finish(
        self, spec: BenchmarkSpec, rec: TunerRecommendation, status: BenchmarkStatus
    ) -> None:
        """Decide the terminal phase; with a recommendation, write and apply it."""
        if rec.verdict != "recommended" or rec.artifacts is None or status.recommendation is None:
            reason = "NoFeasibleConfiguration" if rec.verdict == "infeasible" else "NoTrialMeasured"
            _set_failed(status, reason, rec.message)
            self._event("Warning", "BenchmarkFailed", rec.message)
            return
        target = spec.adopt.target_ref
        container = (target.container if target else None) or "vllm"
        body = recommendation_configmap(ref=self.ref, spec=spec, rec=rec, container=container)
        await self._ctx.kube.apply_configmap(self.ref.namespace, body)
        status.recommendation.config_map = configmap_name(self.ref.name)
        if target is not None and spec.adopt.mode == "Apply":
            await self._apply_to_deployment(spec, rec, status, target.name, container)
        else:
            status.set_condition(
                Condition(
                    type=COND_ADOPTED,
                    status="False",
                    reason="Recommend",
                    message=f"written to ConfigMap {status.recommendation.config_map} "
                    "(spec.adopt.mode is Recommend)",
                )
            )
        status.phase = Phase.SUCCEEDED
        status.finished_at = now_iso()
        status.set_condition(
            Condition(type=COND_COMPLETE, status="True", reason="Recommended", message=rec.message)
        )
        status.set_condition(
            Condition(type=COND_PROGRESSING, status="False", reason="Complete", message="")
        )
        self._event("Normal", "BenchmarkSucceeded", rec.message)

    async def _apply_to_deployment(
        self,
        spec: BenchmarkSpec,
        rec: TunerRecommendation,
        status: BenchmarkStatus,
        target: str,
        container: str,
    ) -> None:
        assert status.recommendation is not None, "called with a recommendation"
        deployment = await self._ctx.kube.get_deployment(self.ref.namespace, target)
        if deployment is None:
            reason, message = "TargetNotFound", f"Deployment {target} not found"
        else:
            try:
                patch = deployment_patch(deployment, spec=spec, rec=rec, container=container)
            except ValueError as err:
                reason, message = "ContainerNotFound", f"Deployment {target}: {err}"
            else:
                await self._ctx.kube.patch_deployment(self.ref.namespace, target, patch)
                status.recommendation.adopted = True
                status.set_condition(
                    Condition(
                        type=COND_ADOPTED,
                        status="True",
                        reason="DeploymentPatched",
                        message=f"Deployment {target} container {container} runs "
                        f"{status.recommendation.summary}",
                    )
                )
                self._event("Normal", "Adopted", f"patched Deployment {target}")
                return
        status.set_condition(
            Condition(type=COND_ADOPTED, status="False", reason=reason, message=message)
        )
        self._event("Warning", reason, message)

    # --- status -------------------------------------------------------------------------

    def _build_status(
        self, spec: BenchmarkSpec, records: list[TrialRecord], rec: TunerRecommendation
    ) -> BenchmarkStatus:
        status = self._status.model_copy(deep=True)
        self._count(status, records, spec)
        points = summarize_points(records, spec)
        status.pareto_front = [_front_point(p, spec) for p in front(points, spec)]
        feasible = [p.energy_per_output_token_j for p in points if p.feasible]
        status.best_j_per_token = min(feasible) if feasible else None
        status.recommendation = _recommendation(rec, spec)
        status.observed_generation = self._body["metadata"].get("generation")
        status.started_at = status.started_at or now_iso()
        status.phase = Phase.RUNNING if records else Phase.PENDING
        status.set_condition(
            Condition(type=COND_SPEC_VALID, status="True", reason="Valid", message="")
        )
        status.set_condition(
            Condition(
                type=COND_PROGRESSING,
                status="True",
                reason="TrialsRunning" if status.trials_running else "Waiting",
                message=f"{status.trials_running} running, {status.trial_progress} measured",
            )
        )
        return status

    def _rows(self, records: list[TrialRecord]) -> list[TrialRow]:
        """The trial table. Pod name and failure word follow from the record when the table
        that held them is gone (a study rebuilt from `spec.storage`)."""
        rows = []
        for record in records:
            placement = self._placements.get(record.number, _Placement())
            pod = placement.pod
            if pod is None and record.duplicate_of is None:
                pod = trial_pod_name(self.ref.name, record.number)
            reason = placement.reason
            if reason is None and record.fail_reason:
                word = record.fail_reason.split(":", 1)[0]
                reason = word if word.isalnum() else "Failed"
            rows.append(
                TrialRow.from_record(
                    record,
                    pod=pod,
                    started_at=placement.started_at,
                    finished_at=placement.finished_at,
                    reason=reason,
                )
            )
        return rows

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

    def _count(
        self, status: BenchmarkStatus, records: list[TrialRecord], spec: BenchmarkSpec
    ) -> None:
        """The trial table and its counts."""
        status.trials = self._rows(records)
        status.trials_running = sum(r.state is RecordState.RUNNING for r in records)
        status.trials_complete = sum(
            r.state is RecordState.COMPLETE and r.duplicate_of is None for r in records
        )
        status.trials_failed = _real_failures(records)
        measured = [r for r in records if r.measured and r.role.value != "finalist"]
        status.trial_progress = f"{len(measured)}/{spec.budget.max_trials}"

    async def fail(self, fatal: _Fatal) -> None:
        """Write a terminal Failed status, and delete the pods the failure names."""
        status = self._status.model_copy(deep=True)
        if self._study is not None and self._spec is not None:
            self._count(status, self._study.records(), self._spec)
        if fatal.reason == "SpecInvalid":
            status.set_condition(
                Condition(
                    type=COND_SPEC_VALID, status="False", reason=fatal.reason, message=fatal.message
                )
            )
        _set_failed(status, fatal.reason, fatal.message)
        status.observed_generation = self._body["metadata"].get("generation")
        await self._write(status)
        await self._delete_pods(fatal.delete)
        self._event("Warning", fatal.reason, fatal.message)

    # --- events -------------------------------------------------------------------------

    def _event_trial_end(self, record: TrialRecord, placement: _Placement) -> None:
        if record.state is RecordState.COMPLETE:
            latency = ", ".join(f"{k} {v:.4g} ms" for k, v in sorted(record.latency_ms.items()))
            self._event(
                "Normal",
                "TrialFinished",
                f"trial {record.number}: {record.point.label()}: "
                f"{record.energy_per_output_token_j:.4g} J/token, {latency}",
            )
        else:
            self._event(
                "Warning",
                "TrialFailed",
                f"trial {record.number}: {placement.reason}: {record.fail_reason}",
            )

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


def _set_failed(status: BenchmarkStatus, reason: str, message: str) -> None:
    status.phase = Phase.FAILED
    status.finished_at = now_iso()
    status.set_condition(Condition(type=COND_FAILED, status="True", reason=reason, message=message))
    status.set_condition(
        Condition(type=COND_PROGRESSING, status="False", reason=reason, message=message)
    )


def _read_status(raw: Any) -> BenchmarkStatus:
    try:
        return BenchmarkStatus.model_validate(raw or {})
    except ValueError:
        # An unreadable status (hand-edited?) is rebuilt from scratch rather than fatal.
        return BenchmarkStatus()


def _number(row: TrialRow) -> int:
    return row.number


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("uid") == uid for o in owners)


def _real_failures(records: list[TrialRecord]) -> int:
    """Trials whose pod failed (not answers copied from an earlier failed trial)."""
    return sum(
        r.state is RecordState.FAILED and r.duplicate_of is None and not r.interrupted
        for r in records
    )


def _front_point(point: PointSummary, spec: BenchmarkSpec) -> FrontPoint:
    return FrontPoint(
        config=TrialConfig.from_point(point.point),
        summary=point.label,
        trials=point.trials,
        j_per_token=point.energy_per_output_token_j,
        latency_ms=point.latency_ms[spec.objective.value],
    )


def _recommendation(rec: TunerRecommendation, spec: BenchmarkSpec) -> Recommendation:
    best = rec.recommended
    if best is None or rec.artifacts is None:
        return Recommendation(verdict=rec.verdict, message=rec.message)
    return Recommendation(
        verdict=rec.verdict,
        message=rec.message,
        config=TrialConfig.from_point(best.point),
        summary=best.label,
        trials=best.trials,
        vllm_args=rec.artifacts.vllm_serve_args,
        power_limit_w=rec.artifacts.power_limit_w,
        j_per_token=best.energy_per_output_token_j,
        latency_metric=spec.objective.value,
        latency_ms=best.latency_ms[spec.objective.value],
        baseline_j_per_token=rec.baseline.energy_per_output_token_j if rec.baseline else None,
        saving_pct=rec.saving_pct,
        latency_cost_ms=rec.latency_cost_ms,
    )
