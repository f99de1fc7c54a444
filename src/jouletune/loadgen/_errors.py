"""The load generator's one exception type."""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(Exception):
    """A benchmark that cannot start or go on (unreachable server or exporter, bad dataset,
    a server that never goes idle). The message is one line, fit for the CLI's stderr.

    Problems found in a finished run (a counter reset, no steady state, a server lost
    mid-run) are not raised: they mark the result invalid or partial, and the result is kept.
    """
