"""The exporter's control port: the GPU API on loopback, so power limits and SM clock locks
can be stepped.

In a trial pod only the exporter sidecar holds the capability to change GPU settings; the
load generator measures several limits and locks under one engine start by asking it, on
`127.0.0.1:--control-port`, with the same API the sim-server serves for its GPUs
(`jouletune.gpu.open_remote_gpus(url, path=EXPORTER_GPUS_PATH)` is its client):

- `GET /gpus` → `{"gpus": [sample with "power_limit_range" and "sm_clock_range", ...]}`
- `PUT /gpus/{index}/power-limit` with `{"watts": W}` caps that GPU; `{"watts": null}` puts it
  back to its limit as found.
- `PUT /gpus/{index}/sm-clock-lock` with `{"mhz": T}` locks its SM clock at T; `{"mhz": null}`
  resets the lock.

Every change goes through the exporter's `PowerLimits` and `ClockLocks`, so the exporter
restores each GPU's original limit and resets each lock when it stops, whatever its clients
did. The port binds loopback only: the metrics port is reachable from the cluster network,
and no one outside the pod may change its GPUs.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from jouletune.exporter._source import GpuSource
from jouletune.gpu import (
    EXPORTER_GPUS_PATH,
    ClockLocks,
    Gpu,
    GpuError,
    PowerLimits,
    gpu_entry,
    sm_clock_lock_mhz,
)

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["CONTROL_HOST", "make_control_app"]

CONTROL_HOST = "127.0.0.1"
_LIMIT_PATH = re.compile(rf"^{EXPORTER_GPUS_PATH}/(\d+)/power-limit$")
_LOCK_PATH = re.compile(rf"^{EXPORTER_GPUS_PATH}/(\d+)/sm-clock-lock$")
_MAX_BODY_BYTES = 1024

_log = logging.getLogger(__name__)


def make_control_app(
    *, source: GpuSource, limits: PowerLimits, locks: ClockLocks
) -> WSGIApplication:
    """The control port's WSGI app over the exported GPUs; changes go through `limits` and
    `locks`."""
    lock = threading.Lock()  # one change at a time: the holders remember originals

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        try:
            if path == EXPORTER_GPUS_PATH and method == "GET":
                return _json(start_response, "200 OK", {"gpus": _entries(source)})
            match = _LIMIT_PATH.match(path)
            if match and method == "PUT":
                gpu = _gpu(source, int(match.group(1)))
                watts = _watts(environ)
                with lock:
                    limits.apply([gpu], watts)
                _log.info("GPU %d power limit %s", gpu.index, _said(watts))
                return _json(start_response, "200 OK", gpu_entry(gpu))
            match = _LOCK_PATH.match(path)
            if match and method == "PUT":
                gpu = _gpu(source, int(match.group(1)))
                mhz = _mhz(environ)
                with lock:
                    locks.apply([gpu], mhz)
                _log.info("GPU %d SM clock %s", gpu.index, _locked(mhz))
                return _json(start_response, "200 OK", gpu_entry(gpu))
        except _BadRequest as err:
            return _json(start_response, err.status, {"error": str(err)})
        except (GpuError, ValueError) as err:
            return _json(start_response, "409 Conflict", {"error": str(err)})
        return _json(start_response, "404 Not Found", {"error": f"no {method} {path}"})

    return app


class _BadRequest(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _entries(source: GpuSource) -> list[dict[str, Any]]:
    return [gpu_entry(gpu) for gpu in source.gpus()]


def _gpu(source: GpuSource, index: int) -> Gpu:
    gpu = next((g for g in source.gpus() if g.index == index), None)
    if gpu is None:
        known = [g.index for g in source.gpus()]
        raise _BadRequest("404 Not Found", f"this exporter serves no GPU {index} (it has {known})")
    return gpu


def _body(environ: WSGIEnvironment) -> Any:
    size = int(environ.get("CONTENT_LENGTH") or 0)
    return json.loads(environ["wsgi.input"].read(min(size, _MAX_BODY_BYTES)) or b"{}")


def _watts(environ: WSGIEnvironment) -> float | None:
    try:
        raw = _body(environ)["watts"]
        watts = None if raw is None else float(raw)
    except (ValueError, KeyError, TypeError):
        raise _BadRequest(
            "400 Bad Request", 'expected a JSON body {"watts": <number or null>}'
        ) from None
    if watts is not None and not math.isfinite(watts):
        raise _BadRequest("400 Bad Request", f"watts must be finite, got {watts}")
    return watts


def _mhz(environ: WSGIEnvironment) -> int | None:
    try:
        return sm_clock_lock_mhz(_body(environ))
    except ValueError:  # a bad body, JSON's errors and a bad Content-Length included
        raise _BadRequest(
            "400 Bad Request", 'expected a JSON body {"mhz": <whole number or null>}'
        ) from None


def _said(watts: float | None) -> str:
    return "back to its limit as found" if watts is None else f"set to {watts:g} W"


def _locked(mhz: int | None) -> str:
    return "lock reset" if mhz is None else f"locked at {mhz} MHz"


def _json(start_response: StartResponse, status: str, data: Any) -> Iterable[bytes]:
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json")])
    return [body]
