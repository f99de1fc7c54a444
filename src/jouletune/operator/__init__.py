"""jouletune.operator: the Kubernetes operator for `EnergyBenchmark` (jouletune.io/v1alpha1).

`jouletune operator` runs it (Kopf); `python -m jouletune.operator.crd` prints its CRD.
The operator keeps up to `spec.budget.parallelTrials` trial pods running, reads each pod's
compact result from its termination message, tells it to the tuner's ask/tell `Study`, and
writes the trial table, the Pareto front and the recommendation into `status`.
"""

from jouletune.operator._config import ConfigError, OperatorConfig
from jouletune.operator._status import (
    BenchmarkStatus,
    Condition,
    FrontPoint,
    Phase,
    Recommendation,
    TrialConfig,
    TrialRow,
    TrialState,
)
from jouletune.operator._wire import CompactResult, PodPlan, ResultError

__all__ = [
    "BenchmarkStatus",
    "CompactResult",
    "Condition",
    "ConfigError",
    "FrontPoint",
    "OperatorConfig",
    "Phase",
    "PodPlan",
    "Recommendation",
    "ResultError",
    "TrialConfig",
    "TrialRow",
    "TrialState",
]
