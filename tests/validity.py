"""Validity thresholds for test runs that last a second or two by design.

Such runs (the tests are about something else: accuracy, the CLI, the operator) would fail the
length checks a real measurement must pass; tests/loadgen/test_checks.py tests the checks
themselves at their defaults.
"""

from __future__ import annotations

SHORT_RUN_VALIDITY = {
    "minWindowS": 0.2,
    "minWindowOutputTokens": 20,
    "minEnergySamples": 4,
    "maxSmClockDrift": 0.5,
}
"""The spec's `validity` section for short runs."""

SHORT_RUN = [arg for k, v in SHORT_RUN_VALIDITY.items() for arg in ("--check", f"{k}={v}")]
"""The same thresholds as `jouletune bench --check` flags."""
