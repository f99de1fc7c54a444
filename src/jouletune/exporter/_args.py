"""Command-line argument types shared by the commands that serve HTTP."""

from __future__ import annotations

import argparse
import math

__all__ = ["port_arg", "seconds_arg", "seconds_or_zero_arg"]


def port_arg(text: str) -> int:
    """An argparse `type=` for a TCP port (0-65535); bad text is argparse's one-line error."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def seconds_arg(text: str) -> float:
    """An argparse `type=` for a duration: a finite number of seconds above zero."""
    value = seconds_or_zero_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (and finite), got {text}")
    return value


def seconds_or_zero_arg(text: str) -> float:
    """An argparse `type=` for a duration that may be zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0 (and finite), got {text}")
    return value
