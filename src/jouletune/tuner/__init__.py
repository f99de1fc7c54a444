"""jouletune.tuner: the energy/latency search behind `jouletune tune` and the operator.

    study = Study.open(spec=spec, name="llama-8b", storage="sqlite:///runs/x/study.db")
    while (plan := study.ask()) is not None:      # the baseline first, then the search
        outcome = ...                              # measure plan.point (measure_point)
        study.tell(plan, outcome)                  # a TrialOutcome: TrialFigures, or a reason
    rec = recommend(spec=spec, records=study.records(), finalists=study.finalists(),
                    done=study.phase() == Phase.DONE)

`BenchmarkSpec` (in `jouletune.tuner.spec`) is both the CLI's YAML and the CRD's `.spec`.
A trial is a `Point` (what it runs) and `TrialFigures` (what it found), kept in a
`TrialRecord`. Runners (`SimRunner`, `LocalRunner`) start servers; `measure_point` and
`measure_sweep` measure points on a running one, for the CLI and the trial pods alike.
"""

from jouletune.tuner._baseline import Baseline, BaselineError, resolve_baseline, spec_defaults
from jouletune.tuner._figures import Column, InvalidMeasurementError, Show, TrialFigures
from jouletune.tuner._local import LocalRunner
from jouletune.tuner._measure import Target, bench_config, measure_point, measure_sweep
from jouletune.tuner._pareto import dominates, pareto_front
from jouletune.tuner._point import Point
from jouletune.tuner._process import StartError
from jouletune.tuner._provenance import Provenance, ProvenanceKind
from jouletune.tuner._recommend import (
    Artifacts,
    ContainerPatch,
    PointSummary,
    Recommendation,
    artifacts,
    front,
    recommend,
    summarize_points,
)
from jouletune.tuner._records import Role, TrialOutcome, TrialPlan, TrialRecord, TrialState
from jouletune.tuner._report import write_report
from jouletune.tuner._runners import Runner, RunnerError, SimRunner, TrialServer
from jouletune.tuner._space import SearchGrid, serve_args
from jouletune.tuner._storage import StorageError, default_storage_url, open_storage
from jouletune.tuner._study import Phase, Study, StudyMismatchError
from jouletune.tuner.spec import BenchmarkSpec, SpecError, load_spec, parse_spec

__all__ = [
    "Artifacts",
    "Baseline",
    "BaselineError",
    "BenchmarkSpec",
    "Column",
    "ContainerPatch",
    "InvalidMeasurementError",
    "LocalRunner",
    "Phase",
    "Point",
    "PointSummary",
    "Provenance",
    "ProvenanceKind",
    "Recommendation",
    "Role",
    "Runner",
    "RunnerError",
    "SearchGrid",
    "Show",
    "SimRunner",
    "SpecError",
    "StartError",
    "StorageError",
    "Study",
    "StudyMismatchError",
    "Target",
    "TrialFigures",
    "TrialOutcome",
    "TrialPlan",
    "TrialRecord",
    "TrialServer",
    "TrialState",
    "artifacts",
    "bench_config",
    "default_storage_url",
    "dominates",
    "front",
    "load_spec",
    "measure_point",
    "measure_sweep",
    "open_storage",
    "pareto_front",
    "parse_spec",
    "recommend",
    "resolve_baseline",
    "serve_args",
    "spec_defaults",
    "summarize_points",
    "write_report",
]
