"""Server processes a runner starts: start, wait for health, stop, and say why one failed.

Every process runs in its own process group (so stopping it also stops the workers vLLM
forks) and, on Linux, dies with jouletune (PR_SET_PDEATHSIG): a `jouletune tune` killed with
SIGKILL must not leave a server holding the GPU and the port for the rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

__all__ = ["ServerProcess", "StartError", "port_busy", "wait_port_free"]

# How often health and port checks poll; a server comes up in seconds (sim) to minutes (vLLM).
_POLL_S = 0.1
# SIGTERM first; a server that has not exited after this long gets SIGKILL. vLLM shuts its
# engine core down in a few seconds.
_STOP_GRACE_S = 20.0
# Lines of a dead server's log quoted in the failure reason's search for a cause.
_LOG_TAIL_LINES = 60
_PR_SET_PDEATHSIG = 1

# (text in the log, one-line reason): the usual ways a server dies at start.
_KNOWN_CAUSES: tuple[tuple[str, str], ...] = (
    ("out of memory", "out of GPU memory (OOM)"),
    ("outofmemoryerror", "out of GPU memory (OOM)"),
    ("no available memory for the cache blocks", "out of GPU memory for the KV cache (OOM)"),
    ("address already in use", "port already in use"),
    ("errno 98", "port already in use"),
)


class StartError(RuntimeError):
    """A server could not be started or did not become healthy; one-line reason."""


@dataclass
class ServerProcess:
    """One running server (or exporter) process and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str

    @classmethod
    def start(cls, *, name: str, argv: list[str], log_path: Path, url: str) -> ServerProcess:
        """Start `argv` in a new process group, stdout and stderr to `log_path`.

        Raises:
            StartError: the command cannot be executed.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            except OSError as err:
                raise StartError(f"{name}: cannot run {argv[0]!r}: {err.strerror}") from None
        return cls(name=name, popen=popen, log_path=log_path, url=url)

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    async def wait_healthy(self, path: str, *, timeout_s: float) -> None:
        """Poll `url + path` until it answers 200.

        Raises:
            StartError: the process exited (with the cause found in its log) or did not
                answer within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise StartError(self.exit_reason())
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(self.url + path) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(_POLL_S)
        raise StartError(f"{self.name} not healthy on {self.url}{path} within {timeout_s:g} s")

    def exit_reason(self) -> str:
        """Why the process exited, one line: a known cause from its log, or its exit code."""
        code = self.popen.poll()
        status = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
        tail = self.log_tail().lower()
        for needle, cause in _KNOWN_CAUSES:
            if needle in tail:
                return f"{self.name} exited ({status}): {cause}; log: {self.log_path}"
        return f"{self.name} exited ({status}); log: {self.log_path}"

    def log_tail(self) -> str:
        """The last lines of the log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    async def stop(self, *, grace_s: float = _STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL it after `grace_s`, and reap the process."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.alive() and time.monotonic() < deadline:
                await asyncio.sleep(_POLL_S)
        # Workers left in the group (or a leader that ignored SIGTERM) are killed outright.
        _signal_group(self.pid, signal.SIGKILL)
        while self.popen.poll() is None:
            await asyncio.sleep(_POLL_S)


def port_busy(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def wait_port_free(host: str, port: int, *, timeout_s: float) -> bool:
    """Poll until nothing listens on host:port; False if it stayed busy for `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while port_busy(host, port):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent() -> None:
    """In the child before exec: receive SIGKILL when the parent dies (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
