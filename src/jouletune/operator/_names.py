"""The EnergyBenchmark resource's names (DESIGN.md's contract), in one place."""

from __future__ import annotations

__all__ = ["CRD_NAME", "GROUP", "KIND", "PLURAL", "SHORT_NAME", "SINGULAR", "VERSION"]

GROUP = "jouletune.io"
VERSION = "v1alpha1"
KIND = "EnergyBenchmark"
PLURAL = "energybenchmarks"
SINGULAR = "energybenchmark"
SHORT_NAME = "ebm"
CRD_NAME = f"{PLURAL}.{GROUP}"
