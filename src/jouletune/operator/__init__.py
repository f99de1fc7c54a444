"""jouletune.operator: the Kubernetes operator for `EnergyBenchmark` (jouletune.io/v1alpha1).

`jouletune operator` runs it (Kopf); `python -m jouletune.operator.crd` prints its CRD.
The operator keeps up to `spec.budget.parallelTrials` trial pods running, reads each pod's
result from its termination message, tells it to the tuner's ask/tell `Study`, and
writes the trial table, the Pareto front and the recommendation into `status`.

    operator = Operator(config=OperatorConfig(), metrics=OperatorMetrics(registry=registry))
    kopf.run(registry=operator.registry(), clusterwide=True, standalone=True)

`Operator` (and so Kopf) is imported on first use: the trial pods' load generator imports
this package too and has no use for Kopf.
"""

from typing import TYPE_CHECKING, Any

from jouletune.operator._config import ConfigError, OperatorConfig
from jouletune.operator._kube import CALLS, ApiCall, KubeApi, KubeError
from jouletune.operator._metrics import OperatorMetrics
from jouletune.operator._outcome import PodOutcome, Timeouts, classify_pod
from jouletune.operator._pods import (
    LABEL_BENCHMARK,
    LABEL_TRIAL,
    BenchmarkRef,
    build_trial_pod,
    trial_pod_name,
)
from jouletune.operator._rbac import KOPF_CALLS, RBAC_RULES, rbac_rules
from jouletune.operator._status import BenchmarkStatus, Condition, Phase, Recommendation, TrialRow
from jouletune.operator._wire import PodPlan, PodResult, PodTrial, ResultError

if TYPE_CHECKING:
    from jouletune.operator._handlers import Operator, configure

__all__ = [
    "CALLS",
    "KOPF_CALLS",
    "LABEL_BENCHMARK",
    "LABEL_TRIAL",
    "RBAC_RULES",
    "ApiCall",
    "BenchmarkRef",
    "BenchmarkStatus",
    "Condition",
    "ConfigError",
    "KubeApi",
    "KubeError",
    "Operator",
    "OperatorConfig",
    "OperatorMetrics",
    "Phase",
    "PodOutcome",
    "PodPlan",
    "PodResult",
    "PodTrial",
    "Recommendation",
    "ResultError",
    "Timeouts",
    "TrialRow",
    "build_trial_pod",
    "classify_pod",
    "configure",
    "rbac_rules",
    "trial_pod_name",
]


def __getattr__(name: str) -> Any:
    if name in ("Operator", "configure"):
        from jouletune.operator import _handlers

        return getattr(_handlers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
