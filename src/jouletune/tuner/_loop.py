"""The CLI's loop: ask a plan, run it on a server for its configuration, tell the outcome.

One server runs at a time. It is kept while consecutive plans share its configuration (the
study orders power steps and finalist repeats so they do) and stopped before the next
configuration starts. A server that fails to start, or dies, fails its trial with the
reason; the study goes on until its budget or `maxFailedTrials` ends it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jouletune.tuner._point import Point
from jouletune.tuner._process import StartError
from jouletune.tuner._records import TrialOutcome, TrialPlan, TrialRecord
from jouletune.tuner._runners import Runner, TrialServer
from jouletune.tuner._study import Study

__all__ = ["LoopObserver", "run_study"]

_log = logging.getLogger(__name__)


class LoopObserver(Protocol):
    """What the loop reports as it goes (the CLI's progress display)."""

    def server_starting(self, config: Point) -> None:
        """A server for `config` is being started."""
        ...

    def trial_started(self, plan: TrialPlan) -> None:
        """`plan` is being measured."""
        ...

    def trial_finished(self, record: TrialRecord) -> None:
        """A trial ended (measured or failed)."""
        ...


@dataclass
class _Current:
    config: Point
    server: TrialServer
    stack: AsyncExitStack
    fresh_start_s: float | None  # start time to charge to the next trial, once


async def run_study(study: Study, runner: Runner, *, out_dir: Path, observer: LoopObserver) -> None:
    """Run `study` to its end on `runner`; every server is stopped however this returns."""
    current: _Current | None = None
    sessions = 0
    try:
        while (plan := study.ask()) is not None:
            if current is not None and (
                current.config != plan.point.server or not current.server.alive()
            ):
                await _stop(current)
                current = None
            if current is None:
                sessions += 1
                observer.server_starting(plan.point.server)
                log_dir = out_dir / "servers" / f"{sessions:03d}-{_slug(plan.point.server)}"
                current, failure = await _start(runner, plan.point.server, log_dir)
                if failure is not None:
                    observer.trial_started(plan)
                    observer.trial_finished(study.tell(plan, failure))
                    continue
            assert current is not None, "a server runs here"
            observer.trial_started(plan)
            outcome = await current.server.measure(
                plan, trial_dir=out_dir / "trials" / f"{plan.number:04d}"
            )
            if current.fresh_start_s is not None:
                outcome = _charge_start(outcome, current.fresh_start_s)
                current.fresh_start_s = None
            observer.trial_finished(study.tell(plan, outcome))
    finally:
        if current is not None:
            await _stop(current)


async def _stop(current: _Current) -> None:
    """Stop a server; a port that stays busy is logged, and the next start will say so."""
    try:
        await current.stack.aclose()
    except StartError as err:
        _log.warning("%s", err)


async def _start(
    runner: Runner, config: Point, log_dir: Path
) -> tuple[_Current | None, TrialOutcome | None]:
    """Start a server; on failure, the outcome to tell for the trial that needed it."""
    stack = AsyncExitStack()
    start = time.monotonic()
    try:
        server = await stack.enter_async_context(runner.server(config, log_dir=log_dir))
    except StartError as err:
        await stack.aclose()
        elapsed = time.monotonic() - start
        return None, TrialOutcome(fail_reason=str(err), server_start_s=elapsed)
    return _Current(config, server, stack, time.monotonic() - start), None


def _charge_start(outcome: TrialOutcome, start_s: float) -> TrialOutcome:
    return dataclasses.replace(outcome, server_start_s=start_s)


def _slug(config: Point) -> str:
    return config.server_label().replace(" ", "-")
