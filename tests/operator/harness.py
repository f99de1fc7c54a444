"""Run the real operator (Kopf's KopfRunner) against the API emulator, and wait on it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf
from kopf.testing import KopfRunner
from prometheus_client import CollectorRegistry

from jouletune.operator import KubeApi, Operator, OperatorConfig, OperatorMetrics
from jouletune.operator.crd import build_crd
from tests.operator.apiserver import Api
from tests.poll import wait_for
from tests.validity import SHORT_RUN_VALIDITY

NAMESPACE = "default"
EBM_PATH = f"/apis/jouletune.io/v1alpha1/namespaces/{NAMESPACE}/energybenchmarks"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
EVENTS_PATH = f"/api/v1/namespaces/{NAMESPACE}/events"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
TRIAL_IMAGE = "jouletune:test"
T = TypeVar("T")

# A workload the simulator serves in about a second: 16 short requests, 4 at a time.
TINY_SPEC: dict[str, Any] = {
    "backend": "sim",
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "engine": {"startupTimeoutS": 30},
    "searchSpace": {"maxNumSeqs": [4, 8], "powerLimitW": [400]},
    "workload": {"inputLen": 32, "outputLen": 16, "numPrompts": 16, "maxConcurrency": 4},
    "slos": [{"metric": "tpot_p90", "maxMs": 1000}],
    "budget": {"maxTrials": 3, "parallelTrials": 2, "trialTimeoutS": 60, "finalistRepeats": 0},
    "validity": SHORT_RUN_VALIDITY,
}


def tiny_spec(**changes: Any) -> dict[str, Any]:
    """TINY_SPEC with top-level sections replaced or merged (dicts are merged one level)."""
    spec = copy.deepcopy(TINY_SPEC)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def benchmark(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An EnergyBenchmark manifest."""
    return {
        "apiVersion": "jouletune.io/v1alpha1",
        "kind": "EnergyBenchmark",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def install_crd(api: Api) -> None:
    """What `kubectl apply -f crds/` does; the emulator then serves energybenchmarks."""
    api.create(CRD_PATH, build_crd())


@dataclass
class RunningOperator:
    """A running operator and its metrics registry."""

    runner: KopfRunner
    metrics: CollectorRegistry


@contextmanager
def running_operator(
    api_url: str, *, config: OperatorConfig | None = None, liveness: str | None = None
) -> Iterator[RunningOperator]:
    """The operator's real handlers under Kopf's test runner, talking to the emulator."""
    registry = CollectorRegistry()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api_url, insecure=True)

    operator = Operator(
        config=config or operator_config(),
        metrics=OperatorMetrics(registry=registry),
        kube_factory=lambda: KubeApi(host=api_url),
        login=login,
    )
    kopf_registry = operator.registry()
    args = ["run", "--standalone", "--namespace", NAMESPACE, "--verbose"]
    if liveness:
        args += ["--liveness", liveness]
    with KopfRunner(args, registry=kopf_registry, timeout=30) as runner:
        yield RunningOperator(runner=runner, metrics=registry)
    assert runner.exception is None, runner.output[-3000:]


def operator_config(**changes: Any) -> OperatorConfig:
    """Operator settings for tests: the test image, quick reconciles and timeouts."""
    values: dict[str, Any] = {
        "trial_image": TRIAL_IMAGE,
        "reconcile_interval_s": 0.5,
        "unschedulable_timeout_s": 1.0,
        "trial_grace_s": 0.0,
    }
    return OperatorConfig(**(values | changes))


def status_of(api: Api, name: str) -> dict[str, Any]:
    """The benchmark's status ({} while none)."""
    obj = api.get(f"{EBM_PATH}/{name}") or {}
    return dict(obj.get("status") or {})


def wait_phase(api: Api, name: str, phases: set[str], timeout_s: float) -> dict[str, Any]:
    """Wait until the benchmark's phase is one of `phases`; return its status."""

    def reached() -> dict[str, Any] | None:
        status = status_of(api, name)
        return status if status.get("phase") in phases else None

    return wait_for(
        reached,
        timeout_s=timeout_s,
        what=f"{name} to reach {sorted(phases)} (last: {status_of(api, name).get('phase')})",
    )


def events_of(api: Api, name: str) -> list[dict[str, Any]]:
    """Events about the benchmark, oldest first."""
    events = api.items(EVENTS_PATH)
    return [e for e in events if e.get("involvedObject", {}).get("name") == name]
