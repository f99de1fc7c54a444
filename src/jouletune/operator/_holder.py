"""What a pod's exporter needs to change GPU power limits and SM clock locks on a real node,
in one place: the trial pod's exporter (it steps caps and locks for the load generator) and
the sidecar adoption adds to a Deployment (it holds the recommended cap and lock) both get it
from here.

- Privileges: `nvmlDeviceSetPowerManagementLimit` and `nvmlDeviceSetGpuLockedClocks` need
  root with CAP_SYS_ADMIN. Kubernetes sets no ambient capabilities, so an added capability is
  effective for uid 0 only: the container runs as root, with every other capability dropped
  and no privilege escalation.
- A node-local state directory (a hostPath): the exporter writes each GPU's limit as found,
  and a record of each lock, there before changing it (`jouletune.gpu.LimitStore`), so that
  when a container is SIGKILLed or OOM-killed, or its pod is lost, the next exporter on the
  node restores the limit and resets the lock before anything else, instead of taking the
  cap or lock for the GPU as found.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATE_DIR", "STATE_VOLUME", "hold_limits", "holder_security", "state_volume"]

STATE_VOLUME = "jouletune-state"
# The same path on the node and in the container: `jouletune exporter`'s default for root.
STATE_DIR = "/var/lib/jouletune"


def holder_security() -> dict[str, Any]:
    """The securityContext of a container that changes power limits."""
    return {
        "allowPrivilegeEscalation": False,
        # Root for the capability to be effective; overrides a pod-level runAsNonRoot.
        "runAsUser": 0,
        "runAsNonRoot": False,
        "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
    }


def state_volume() -> dict[str, Any]:
    """The node's state directory as a volume (created on first use)."""
    return {"name": STATE_VOLUME, "hostPath": {"path": STATE_DIR, "type": "DirectoryOrCreate"}}


def hold_limits(container: dict[str, Any]) -> None:
    """Make `container` (a `jouletune exporter` that changes limits) a limit holder: root with
    SYS_ADMIN, and its state directory on the node (add `state_volume()` to the pod)."""
    container["securityContext"] = holder_security()
    container["args"] = [*container.get("args", []), "--state-dir", STATE_DIR]
    mounts = [m for m in container.get("volumeMounts", []) if m.get("name") != STATE_VOLUME]
    container["volumeMounts"] = [*mounts, {"name": STATE_VOLUME, "mountPath": STATE_DIR}]
