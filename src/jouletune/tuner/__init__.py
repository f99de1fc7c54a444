"""jouletune.tuner: the energy/latency search behind `jouletune tune` and the operator.

    study = Study.open(spec=spec, name="llama-8b", storage="sqlite:///runs/x/study.db")
    while (plan := study.ask()) is not None:      # the baseline first, then the search
        outcome = ...                              # run plan.point on a server (a Runner)
        study.tell(plan, outcome)                  # a TrialOutcome: a bench result, or a reason
    rec = recommend(spec=spec, records=study.records(), finalists=study.finalists(),
                    done=study.phase() == Phase.DONE)

`BenchmarkSpec` (in `jouletune.tuner.spec`) is both the CLI's YAML and the CRD's `.spec`.
Runners (`SimRunner`, `LocalRunner`) start servers for server configurations and measure plans.
"""

from jouletune.tuner._pareto import dominates, pareto_front
from jouletune.tuner._process import StartError
from jouletune.tuner._recommend import (
    Artifacts,
    PointSummary,
    Recommendation,
    artifacts,
    front,
    recommend,
    summarize_points,
)
from jouletune.tuner._records import (
    Role,
    TrialOutcome,
    TrialPlan,
    TrialRecord,
    TrialState,
    figures_from_result,
)
from jouletune.tuner._report import write_report
from jouletune.tuner._runners import (
    LocalRunner,
    Runner,
    RunnerError,
    SimRunner,
    TrialServer,
    bench_config,
    vllm_command,
)
from jouletune.tuner._space import PointConfig, SearchGrid, ServerConfig, serve_args
from jouletune.tuner._storage import StorageError, default_storage_url, open_storage
from jouletune.tuner._study import Phase, Study, StudyMismatchError
from jouletune.tuner.spec import BenchmarkSpec, SpecError, load_spec, parse_spec

__all__ = [
    "Artifacts",
    "BenchmarkSpec",
    "LocalRunner",
    "Phase",
    "PointConfig",
    "PointSummary",
    "Recommendation",
    "Role",
    "Runner",
    "RunnerError",
    "SearchGrid",
    "ServerConfig",
    "SimRunner",
    "SpecError",
    "StartError",
    "StorageError",
    "Study",
    "StudyMismatchError",
    "TrialOutcome",
    "TrialPlan",
    "TrialRecord",
    "TrialServer",
    "TrialState",
    "artifacts",
    "bench_config",
    "default_storage_url",
    "dominates",
    "figures_from_result",
    "front",
    "load_spec",
    "open_storage",
    "pareto_front",
    "parse_spec",
    "recommend",
    "serve_args",
    "summarize_points",
    "vllm_command",
    "write_report",
]
