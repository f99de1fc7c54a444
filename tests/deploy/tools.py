"""Paths and runners for the real tools: helm, kubectl, promtool, prometheus, hadolint, chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "jouletune"
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "jouletune.rules.yml"
CRD = ROOT / "crds" / "energybenchmarks.jouletune.io.yaml"

# Every optional part of the chart switched on, so that the checks see all of it.
ALL_ON = [
    "metrics.podMonitor.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "grafana.dashboards.enabled=true",
]


def tool(name: str) -> str:
    """The binary `name` from .tools/bin, .venv/bin or PATH; fails the test where it is missing
    (CI installs every one: a missing tool is a broken setup, not a reason to skip)."""
    for candidate in (ROOT / ".tools" / "bin" / name, ROOT / ".venv" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/install-tools.sh installs it)")
    return found


def run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; on an unexpected failure the assertion shows its output."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def helm_template(
    release: str = "jt",
    namespace: str = "jouletune",
    *,
    sets: list[str] | None = None,
    set_strings: list[str] | None = None,
    values: Mapping[str, Any] | None = None,
    kube_version: str | None = None,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """`helm template` of the chart: the rendered objects, in order. `values` go in as a
    values file (`-f`), `kube_version` as the cluster's (`--kube-version`)."""
    args = [tool("helm"), "template", release, str(CHART), "--namespace", namespace]
    for value in sets or []:
        args += ["--set", value]
    for value in set_strings or []:
        args += ["--set-string", value]
    if kube_version is not None:
        args += ["--kube-version", kube_version]
    if include_crds:
        args.append("--include-crds")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        if values is not None:
            yaml.safe_dump(dict(values), file)
            file.flush()
            args += ["-f", file.name]
        out = run(args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def strategic_merge(obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` with a strategic-merge `patch` applied as the API server applies it (lists of
    containers, env, volumes merged by their keys): by the real kubectl, offline
    (`kubectl patch --local`, which needs no cluster and reads no kubeconfig here).

    Raises:
        ValueError: kubectl refused the patch (its message, one line).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json") as current:
        json.dump(obj, current)
        current.flush()
        args = [tool("kubectl"), "patch", "--local", "-f", current.name]
        args += ["--type", "strategic", "-p", json.dumps(patch), "-o", "json"]
        env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": os.devnull}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    if proc.returncode != 0:
        raise ValueError(" ".join(proc.stderr.split()) or f"kubectl exited {proc.returncode}")
    merged: dict[str, Any] = json.loads(proc.stdout)
    return merged
