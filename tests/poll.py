"""The one way tests wait: poll a probe until it holds, or fail saying what never happened."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = 0.05,
    proc: subprocess.Popen[bytes] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `probe` every `poll_s` until it returns something truthy, and return that.

    Fails the test (AssertionError naming `what`) after `timeout_s`, or as soon as `proc` has
    exited; exceptions of the `ignore` types count as "not yet".
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value: T | None
        try:
            value = probe()
        except ignore:
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)
