"""HTTP for the exporter: `/metrics` (prometheus_client's WSGI app, or plain text in
dcgm-exporter's format) and `/healthz`.

A threaded stdlib WSGI server is all a one-pod sidecar needs: no event loop, no extra
dependency on the GPU host, and a scrape costs one NVML read of each GPU plus text encoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from jouletune.gpu import GpuError

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from prometheus_client.registry import CollectorRegistry

__all__ = ["ExporterServer", "make_app", "registry_app", "text_app"]

_log = logging.getLogger(__name__)

# What reading a GPU may raise: GpuError, or ValueError for a --gpus index the source lacks.
_READ_ERRORS = (GpuError, ValueError)


def registry_app(registry: CollectorRegistry) -> WSGIApplication:
    """`/metrics` from a registry holding the `GpuCollector` (text or OpenMetrics, gzip when
    asked, as prometheus_client does)."""
    return make_wsgi_app(registry)


def text_app(render: Callable[[], str]) -> WSGIApplication:
    """`/metrics` as the Prometheus text `render()` returns, read fresh on every request."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = render().encode()
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
        return [body]

    return app


def make_app(*, metrics_app: WSGIApplication, check_health: Callable[[], str]) -> WSGIApplication:
    """The exporter's WSGI app.

    Args:
        metrics_app: answers `/metrics` (`registry_app` or `text_app`); a `GpuError` (or
            ValueError) it raises becomes a 503 with the reason.
        check_health: returns a one-line status when the GPUs can be read, raises `GpuError`
            (or ValueError) saying why not. `/healthz` answers 200 or 503 with that line.
    """

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _healthz(check_health, start_response)
        if path == "/metrics":
            try:
                return metrics_app(environ, start_response)
            except _READ_ERRORS as err:
                # prometheus_client appends the failing metric to args; the reason is args[0].
                return _plain(start_response, "503 Service Unavailable", _reason(err))
        return _plain(start_response, "404 Not Found", "not found: use /metrics or /healthz")

    return app


class ExporterServer:
    """A threaded HTTP server around the exporter's app; `serve_forever()` until `shutdown()`."""

    def __init__(self, *, app: WSGIApplication, host: str, port: int) -> None:
        self._httpd = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )

    @property
    def port(self) -> int:
        """The port bound (useful when asked for port 0)."""
        return int(self._httpd.server_address[1])

    def serve_forever(self) -> None:
        """Answer requests until `shutdown()` is called from another thread."""
        self._httpd.serve_forever()

    def shutdown(self) -> None:
        """Stop `serve_forever()` and close the socket; call from a thread other than its own."""
        self._httpd.shutdown()
        self._httpd.server_close()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # A slow scrape must not hold up /healthz, and threads must not keep the process alive.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """wsgiref logs every request to stderr; Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug(format, *args)


def _healthz(check: Callable[[], str], start_response: StartResponse) -> Iterable[bytes]:
    try:
        status = check()
    except _READ_ERRORS as err:
        return _plain(start_response, "503 Service Unavailable", _reason(err))
    return _plain(start_response, "200 OK", status)


def _plain(start_response: StartResponse, status: str, text: str) -> Iterable[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body]


def _reason(err: BaseException) -> str:
    return str(err.args[0]) if err.args else type(err).__name__
