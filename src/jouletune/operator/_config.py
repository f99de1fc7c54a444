"""The operator's own settings: where and with what it runs trial pods, how often it looks.

The Helm chart passes the trial settings as environment variables holding JSON
(`JOULETUNE_TRIAL_IMAGE`, `JOULETUNE_TRIAL_NODE_SELECTOR`, `JOULETUNE_TRIAL_TOLERATIONS`);
the rest are command-line flags of `jouletune operator`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jouletune import __version__

__all__ = ["ConfigError", "OperatorConfig"]

ENV_TRIAL_IMAGE = "JOULETUNE_TRIAL_IMAGE"
ENV_TRIAL_NODE_SELECTOR = "JOULETUNE_TRIAL_NODE_SELECTOR"
ENV_TRIAL_TOLERATIONS = "JOULETUNE_TRIAL_TOLERATIONS"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True, kw_only=True)
class OperatorConfig:
    """Settings of one operator process.

    Attributes:
        trial_image: the jouletune image of the exporter sidecar and the load generator (and
            of the engine for `backend: sim`).
        image_pull_policy: pull policy of every trial container.
        trial_node_selector: nodeSelector of trial pods (e.g. GPU nodes).
        trial_tolerations: tolerations of trial pods (e.g. the GPU nodes' taint).
        reconcile_interval_s: how often a benchmark is looked at when no pod event arrives;
            pod events wake it at once, so this only bounds how late a timeout is noticed.
        unschedulable_timeout_s: how long a trial pod may stay Unschedulable before the
            trial fails (a cluster autoscaler may add a node meanwhile).
        trial_grace_s: extra seconds beyond `spec.budget.trialTimeoutS` (+ engine start-up)
            before the operator gives up on a pod that does not end by itself.
    """

    trial_image: str = f"jouletune:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    trial_node_selector: Mapping[str, str] = field(default_factory=dict)
    trial_tolerations: tuple[Mapping[str, Any], ...] = ()
    reconcile_interval_s: float = 10.0
    unschedulable_timeout_s: float = 300.0
    trial_grace_s: float = 60.0

    def __post_init__(self) -> None:
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(
                f"image pull policy must be Always, IfNotPresent or Never, "
                f"got {self.image_pull_policy!r}"
            )
        for name in ("reconcile_interval_s", "unschedulable_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> OperatorConfig:
        """Read the chart's JOULETUNE_TRIAL_* variables; `overrides` (flags) win."""
        values: dict[str, Any] = {}
        if env.get(ENV_TRIAL_IMAGE):
            values["trial_image"] = env[ENV_TRIAL_IMAGE]
        if env.get(ENV_TRIAL_NODE_SELECTOR):
            selector = _json(env, ENV_TRIAL_NODE_SELECTOR, dict)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
                raise ConfigError(f"{ENV_TRIAL_NODE_SELECTOR}: expected string keys and values")
            values["trial_node_selector"] = selector
        if env.get(ENV_TRIAL_TOLERATIONS):
            tolerations = _json(env, ENV_TRIAL_TOLERATIONS, list)
            if not all(isinstance(t, dict) for t in tolerations):
                raise ConfigError(f"{ENV_TRIAL_TOLERATIONS}: expected a list of objects")
            values["trial_tolerations"] = tuple(tolerations)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _json(env: Mapping[str, str], name: str, kind: type) -> Any:
    try:
        value = json.loads(env[name])
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name}: not JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value
