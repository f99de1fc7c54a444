"""Real processes for end-to-end tests: start a `jouletune` command (or Prometheus), wait until
it answers, and stop it when the block ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.poll import wait_for


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A running `jouletune` process and where it listens."""

    popen: subprocess.Popen[bytes]
    url: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def wait_http_ok(url: str, timeout_s: float = 30.0, proc: Proc | None = None) -> None:
    """Poll `url` until it answers 200; fail early (with its log) if `proc` exits."""

    def ok() -> bool:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)

    try:
        wait_for(
            ok,
            timeout_s=timeout_s,
            what=f"{url} to answer 200",
            proc=None if proc is None else proc.popen,
            ignore=(urllib.error.URLError, ConnectionError, TimeoutError),
        )
    except AssertionError as err:
        log = "" if proc is None else f"\n{proc.log()}"
        raise AssertionError(f"{err}{log}") from None


@contextmanager
def jouletune_process(
    args: list[str], *, port: int, health_path: str, timeout_s: float = 30.0
) -> Iterator[Proc]:
    """Run `python -m jouletune ARGS` until the block ends; yields once `health_path` is 200."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.NamedTemporaryFile(prefix="jouletune-", suffix=".log") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "jouletune", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        proc = Proc(popen=popen, url=f"http://127.0.0.1:{port}", log_path=log.name)
        try:
            wait_http_ok(proc.url + health_path, timeout_s, proc)
            yield proc
        finally:
            stop(popen)


@contextmanager
def sim_server(model: str, *flags: str) -> Iterator[Proc]:
    """`jouletune sim-server MODEL FLAGS...` on a free loopback port."""
    port = free_port()
    args = ["sim-server", model, "--host", "127.0.0.1", "--port", str(port), *flags]
    with jouletune_process(args, port=port, health_path="/health") as proc:
        yield proc


@contextmanager
def sim_exporter(server_url: str, *flags: str, port: int | None = None) -> Iterator[Proc]:
    """`jouletune exporter --sim SERVER_URL FLAGS` on loopback (a free port unless `port`)."""
    port = port or free_port()
    args = ["exporter", "--sim", server_url, "--host", "127.0.0.1", "--port", str(port), *flags]
    with jouletune_process(args, port=port, health_path="/healthz") as proc:
        yield proc


@contextmanager
def prometheus_process(
    config: Path, *, workdir: Path, binary: str = "prometheus", timeout_s: float = 30.0
) -> Iterator[str]:
    """Run a Prometheus server with `config` on a free loopback port until the block ends.

    Its TSDB goes to `workdir/data` and its log to `workdir/prometheus.log`; yields its base
    URL once `/-/ready` answers 200.
    """
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc = Proc(popen=popen, url=f"http://127.0.0.1:{port}", log_path=str(log_path))
        try:
            wait_http_ok(proc.url + "/-/ready", timeout_s, proc)
            yield proc.url
        finally:
            stop(popen)


def stop(popen: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """End a process we started: SIGTERM, then SIGKILL if it is still there after `timeout_s`."""
    popen.terminate()
    try:
        popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
