"""The Kopf handlers, registered into a registry of their own (never Kopf's global one).

- a daemon per EnergyBenchmark runs its `BenchmarkLoop` (started on create and on operator
  resume, stopped by Kopf on deletion);
- an event handler on trial pods wakes their benchmark's loop at once;
- a deletion handler removes the trial pods (a real cluster's garbage collector would too,
  through the ownerReferences; deleting them here frees the GPUs without waiting for it).

`Operator(...).registry()` is what `jouletune operator` runs with `kopf.run`, and what the
tests run with `kopf.testing.KopfRunner(registry=...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from jouletune.contract import CRD_GROUP as GROUP
from jouletune.contract import CRD_KIND as KIND
from jouletune.contract import CRD_PLURAL as PLURAL
from jouletune.contract import CRD_VERSION as VERSION
from jouletune.operator._benchmark import BenchmarkLoop
from jouletune.operator._config import OperatorConfig
from jouletune.operator._context import Context, EventSink, kopf_events
from jouletune.operator._kube import KubeApi
from jouletune.operator._metrics import OperatorMetrics
from jouletune.operator._pods import LABEL_BENCHMARK, benchmark_label

__all__ = ["Operator", "configure"]

# How long Kopf waits for a cancelled benchmark loop before it gives up on it; a loop only
# awaits HTTP calls, so a few seconds is plenty.
_CANCELLATION_TIMEOUT_S = 10.0
# Retry delay after a loop crashed on an unexpected error (the API server restarting, ...).
_LOOP_BACKOFF_S = 5.0


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings the operator relies on (also what its RBAC rules assume)."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Progress and diff-base in annotations: the status schema is structural, so anything
    # Kopf wrote under status would be pruned by the API server.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Serve the namespaces given and the CRD present at start: no list/watch of CRDs or
    # Namespaces needed (least privilege; the chart installs the CRD before the operator).
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO


class Operator:
    """The operator's handlers and the state they share.

    Args:
        config: the operator's settings.
        metrics: where the per-benchmark metrics go.
        kube_factory: makes the API client once Kopf's loop runs (tests point it at an
            emulator).
        events: posts Kubernetes Events (Kopf's queue by default).
        login: Kopf's login handler (default: the official client's in-cluster service
            account or kubeconfig, as Kopf's own default registry would use).
    """

    def __init__(
        self,
        *,
        config: OperatorConfig,
        metrics: OperatorMetrics,
        kube_factory: Callable[[], KubeApi] = KubeApi.from_environment,
        events: EventSink = kopf_events,
        login: Callable[..., Any] = kopf.login_via_client,
    ) -> None:
        self._config = config
        self._login = login
        self._metrics = metrics
        self._kube_factory = kube_factory
        self._events = events
        self._ctx: Context | None = None
        # One loop per benchmark uid, kept across daemon retries so the study stays in memory.
        self._loops: dict[str, BenchmarkLoop] = {}

    def registry(self) -> kopf.OperatorRegistry:
        """A fresh Kopf registry holding this operator's handlers."""
        registry = kopf.OperatorRegistry()
        # A registry of our own has none of Kopf's default login handlers: name one.
        kopf.on.login(registry=registry, id="login")(self._login)
        kopf.on.startup(registry=registry)(self._startup)
        kopf.on.cleanup(registry=registry)(self._cleanup)
        kopf.daemon(
            GROUP,
            VERSION,
            PLURAL,
            registry=registry,
            id="benchmark",
            backoff=_LOOP_BACKOFF_S,
            cancellation_timeout=_CANCELLATION_TIMEOUT_S,
        )(self._daemon)
        kopf.on.event("", "v1", "pods", registry=registry, labels={LABEL_BENCHMARK: kopf.PRESENT})(
            self._pod_event
        )
        kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="cleanup")(self._delete)
        return registry

    async def _startup(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        self._ctx = Context(
            kube=self._kube_factory(),
            config=self._config,
            metrics=self._metrics,
            events=self._events,
        )

    async def _cleanup(self, **_: Any) -> None:
        if self._ctx is not None:
            await self._ctx.kube.close()

    async def _daemon(self, body: kopf.Body, uid: str, logger: kopf.Logger, **_: Any) -> None:
        loop = self._loops.get(uid)
        if loop is None:
            loop = self._loops[uid] = BenchmarkLoop(ctx=self._context(), body=body, logger=logger)
        await loop.run()

    async def _pod_event(self, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        owner = _owner_name(body)
        if owner is not None and namespace is not None and self._ctx is not None:
            self._ctx.wakeup(namespace, owner).set()

    async def _delete(
        self, name: str, namespace: str | None, uid: str, logger: kopf.Logger, **_: Any
    ) -> None:
        assert namespace is not None, "EnergyBenchmarks are namespaced"
        ctx = self._context()
        loop = self._loops.get(uid)
        if loop is not None:
            loop.close()
        labels = {LABEL_BENCHMARK: benchmark_label(name)}
        pods = await ctx.kube.list_pods(namespace, labels=labels)
        for pod in pods:
            if _owner_uid(pod) == uid:
                await ctx.kube.delete_pod(namespace, pod["metadata"]["name"])
        logger.info("deleted %d trial pod(s)", len(pods))
        self._loops.pop(uid, None)
        ctx.wakeups.pop((namespace, name), None)
        self._metrics.forget(namespace, name)

    def _context(self) -> Context:
        assert self._ctx is not None, "the startup handler runs before any other"
        return self._ctx


def _owner(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((o for o in owners if o.get("kind") == KIND), None)


def _owner_name(pod: Mapping[str, Any]) -> str | None:
    owner = _owner(pod)
    return None if owner is None else str(owner.get("name"))


def _owner_uid(pod: Mapping[str, Any]) -> str | None:
    owner = _owner(pod)
    return None if owner is None else str(owner.get("uid"))
