"""`jouletune exporter`: serve GPU energy and power to Prometheus.

    jouletune exporter [--port 9400] [--host 0.0.0.0] [--sim URL]
                       [--gpus 0,1 | --gpus GPU-…,GPU-… | --gpus-file PATH] [--power-limit-w W]
                       [--lock-sm-clock-mhz T] [--control-port 9401] [--state-dir DIR]
                       [--format jouletune|dcgm] [--collect-interval-s S]

NVML by default; `--sim URL` serves a `jouletune sim-server`'s GPUs instead. Without a
selection it exports the GPUs CUDA would see here (all, unless CUDA_VISIBLE_DEVICES or
NVIDIA_VISIBLE_DEVICES narrow them: `jouletune.gpu.VisibleDevices`). `--gpus` picks
GPUs by index or UUID; `--gpus-file` waits for a file that lists them (in a trial pod the
engine container writes the UUIDs of the GPUs the device plugin gave it, since the sidecar
sees the whole node). With
`--power-limit-w`, the exporter holds that cap on its GPUs while it runs and restores each
GPU's previous limit when it stops; with `--lock-sm-clock-mhz T` it holds their SM clocks
locked at T (`nvidia-smi -lgc T,T`) and resets the locks when it stops. In a trial pod, and
beside an adopted Deployment, it is the one container that needs the capability to change
GPU settings. `--control-port` serves the GPU API on 127.0.0.1 so the load generator can step
limits and locks through the exporter (`_control`); the exporter restores every GPU's
original limit and resets every lock when it stops.

An exporter that may change GPU settings (any of those flags) writes each GPU's setting as
found to `--state-dir` before changing it; at start it restores, first, the limits and locks
a killed predecessor left there for its GPUs, and logs each
(`jouletune.gpu.restore_left_limits`).
In a pod, the `pod` and `namespace` labels come from POD_NAME and POD_NAMESPACE (the
downward API). `--format dcgm` serves the same reads under NVIDIA dcgm-exporter's names,
units and labels (`_dcgm`), the host label from NODE_NAME or the hostname; with
`--collect-interval-s` it serves each read for that long, as dcgm-exporter does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from jouletune.contract import EXPORTER_PORT
from jouletune.exporter._args import port_arg, seconds_arg, seconds_or_zero_arg
from jouletune.exporter._collector import GpuCollector
from jouletune.exporter._control import CONTROL_HOST, make_control_app
from jouletune.exporter._dcgm import DcgmLabels, render_dcgm
from jouletune.exporter._server import ExporterServer, make_app, registry_app, text_app
from jouletune.exporter._source import GpuSource
from jouletune.gpu import (
    STATE_DIR_ENV,
    ClockLocks,
    Gpu,
    GpuError,
    GpuSelector,
    LimitStore,
    NvmlGpu,
    NvmlUnavailableError,
    PowerLimits,
    VisibleDevices,
    default_state_dir,
    held_clock_locks,
    held_power_limits,
    nvml_versions,
    open_nvml_gpus,
    open_sim_gpus,
    parse_selection,
    read_gpu_list,
    restore_left_limits,
)

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["main"]

_log = logging.getLogger("jouletune.exporter")

# Exit codes: 2 for bad input or a host where NVML cannot run at all, 1 for other failures.
_EXIT_USAGE = 2
_EXIT_FAILURE = 1
_GPUS_FILE_POLL_S = 0.2
_SIMULATED = "simulated"


def main(argv: list[str]) -> int:
    """Run the exporter until SIGTERM or Ctrl-C; return the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        selection = args.gpus or _wait_for_gpus_file(args.gpus_file, args.gpus_file_timeout_s)
    except ValueError as err:
        return _fail(str(err), _EXIT_FAILURE)
    except KeyboardInterrupt:
        return 0  # stopped while waiting: nothing was opened, nothing to restore
    source = _source(args.sim, selection, VisibleDevices.from_env(), args.collect_interval_s)
    store = LimitStore(args.state_dir or default_state_dir())
    failed = _open(source, store, sim=args.sim is not None, changes_limits=_changes_limits(args))
    if failed is not None:
        return failed
    metrics = _metrics_app(args.format, source, _driver_version(args.sim))
    app = make_app(metrics_app=metrics, check_health=source.health)
    try:
        server = ExporterServer(app=app, host=args.host, port=args.port)
    except OSError as err:
        return _fail(f"cannot listen on {args.host}:{args.port}: {err.strerror}", _EXIT_FAILURE)
    _log.info("serving http://%s:%d/metrics and /healthz", args.host, server.port)
    try:
        with held_power_limits(store=store) as limits, held_clock_locks(store=store) as locks:
            _hold(limits, source.opened(), args.power_limit_w)
            _hold_lock(locks, source.opened(), args.lock_sm_clock_mhz)
            control = _control_server(args.control_port, source, limits, locks)
            try:
                _serve_until_signal(server)
            finally:
                if control is not None:
                    control.shutdown()
    except OSError as err:
        return _fail(f"cannot listen on the control port: {err.strerror}", _EXIT_FAILURE)
    except (GpuError, ValueError) as err:
        return _fail(str(err), _EXIT_FAILURE)
    finally:
        _close(source.opened())
    return 0


def _metrics_app(fmt: str, source: GpuSource, driver: str) -> WSGIApplication:
    """`/metrics` in jouletune's names (a prometheus_client registry) or dcgm-exporter's."""
    pod, namespace = os.environ.get("POD_NAME", ""), os.environ.get("POD_NAMESPACE", "")
    if fmt == "dcgm":
        host = os.environ.get("NODE_NAME") or socket.gethostname()
        labels = DcgmLabels(hostname=host, driver_version=driver, pod=pod, namespace=namespace)
        return text_app(lambda: render_dcgm(source.read(), labels))
    registry = CollectorRegistry()
    info = {"source": "sim" if driver == _SIMULATED else "nvml", "driver_version": driver}
    registry.register(GpuCollector(read=source.read, pod=pod, namespace=namespace, info=info))
    return registry_app(registry)


def _driver_version(sim_url: str | None) -> str:
    """NVML's driver version, or `simulated` for a sim-server's GPUs (never mistaken for a
    measurement downstream)."""
    if sim_url is not None:
        return _SIMULATED
    try:
        return nvml_versions()["driver"]
    except GpuError:
        return "unknown"


def _open(source: GpuSource, store: LimitStore, *, sim: bool, changes_limits: bool) -> int | None:
    """Open the GPUs and, before anything else, restore the limits a killed predecessor left
    for them (only where this exporter may change limits); the exit code if it cannot."""
    try:
        gpus = source.gpus()
    except (NvmlUnavailableError, ValueError) as err:
        return _fail(str(err), _EXIT_USAGE)
    except GpuError as err:
        if not sim:
            return _fail(str(err), _EXIT_FAILURE)
        # A sidecar may start before its sim-server; /healthz says 503 until it answers. A
        # limit left for one of its GPUs is restored when one is first changed (PowerLimits).
        _log.warning("%s; serving 503 on /healthz until it answers", err)
        return None
    _log.info("exporting %s from %s", ", ".join(map(repr, gpus)), source.where)
    if changes_limits:
        try:
            restore_left_limits(store, gpus)
        except GpuError as err:
            return _fail(f"cannot restore a limit left in {store.directory}: {err}", _EXIT_FAILURE)
    return None


def _changes_limits(args: argparse.Namespace) -> bool:
    return (
        args.power_limit_w is not None
        or args.lock_sm_clock_mhz is not None
        or args.control_port is not None
    )


def _hold(limits: PowerLimits, gpus: Sequence[Gpu], watts: float | None) -> None:
    """With `watts`, cap the exported GPUs now (held until the exporter stops)."""
    if watts is None:
        return
    try:
        if not gpus:
            raise GpuError("no GPU could be opened")
        limits.apply(gpus, watts)
    except (GpuError, ValueError) as err:
        raise GpuError(f"cannot hold power limit {watts:g} W: {err}") from None
    _log.info("holding a %g W power limit on %d GPU(s)", watts, len(gpus))


def _hold_lock(locks: ClockLocks, gpus: Sequence[Gpu], mhz: int | None) -> None:
    """With `mhz`, lock the exported GPUs' SM clocks now (held until the exporter stops)."""
    if mhz is None:
        return
    try:
        if not gpus:
            raise GpuError("no GPU could be opened")
        locks.apply(gpus, mhz)
    except (GpuError, ValueError) as err:
        raise GpuError(f"cannot hold an SM clock lock at {mhz} MHz: {err}") from None
    _log.info("holding the SM clock locked at %d MHz on %d GPU(s)", mhz, len(gpus))


def _control_server(
    port: int | None, source: GpuSource, limits: PowerLimits, locks: ClockLocks
) -> ExporterServer | None:
    """Start the loopback control port in a thread, if asked for."""
    if port is None:
        return None
    control = ExporterServer(
        app=make_control_app(source=source, limits=limits, locks=locks),
        host=CONTROL_HOST,
        port=port,
    )
    threading.Thread(target=control.serve_forever, name="control", daemon=True).start()
    _log.info("GPU settings control on http://%s:%d/gpus", CONTROL_HOST, control.port)
    return control


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jouletune exporter", description="Serve GPU energy and power to Prometheus."
    )
    parser.add_argument(
        "--port", type=port_arg, default=EXPORTER_PORT, help=f"TCP port (default {EXPORTER_PORT})"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--sim", metavar="URL", help="read a jouletune sim-server's GPUs")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--gpus",
        type=_selection,
        metavar="0,1",
        help="export only these GPUs, by index or UUID (default all)",
    )
    chosen.add_argument(
        "--gpus-file",
        type=Path,
        metavar="PATH",
        help="wait for PATH, then export the GPUs it lists (indices or UUIDs)",
    )
    parser.add_argument(
        "--gpus-file-timeout-s",
        type=seconds_arg,
        default=600.0,
        metavar="S",
        help="how long to wait for --gpus-file (default 600)",
    )
    parser.add_argument(
        "--power-limit-w",
        type=float,
        metavar="W",
        help="hold this power cap on the exported GPUs while running; restored on exit",
    )
    parser.add_argument(
        "--lock-sm-clock-mhz",
        type=_mhz_arg,
        metavar="T",
        help="hold the exported GPUs' SM clocks locked at T MHz while running (as "
        "nvidia-smi -lgc T,T); reset on exit",
    )
    parser.add_argument(
        "--format",
        choices=("jouletune", "dcgm"),
        default="jouletune",
        help="metric names: jouletune's (default) or NVIDIA dcgm-exporter's",
    )
    parser.add_argument(
        "--collect-interval-s",
        type=seconds_or_zero_arg,
        default=0.0,
        metavar="S",
        help="serve each read for S seconds, as dcgm-exporter's --collect-interval does"
        " (default 0: read the GPUs on every scrape)",
    )
    parser.add_argument(
        "--control-port",
        type=port_arg,
        metavar="PORT",
        help="serve the GPU settings API (power limits, SM clock locks) on 127.0.0.1:PORT"
        " (restored on exit)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where each GPU's setting as found is kept while changed, for the next run to "
        f"restore after a crash (default: ${STATE_DIR_ENV}, $XDG_STATE_HOME/jouletune, "
        "/var/lib/jouletune as root, else ~/.local/state/jouletune)",
    )
    return parser


def _mhz_arg(text: str) -> int:
    """`--lock-sm-clock-mhz`: a whole, positive number of MHz."""
    try:
        mhz = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of MHz, got {text!r}") from None
    if mhz <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of MHz, got {mhz}")
    return mhz


def _selection(text: str) -> list[GpuSelector]:
    """`--gpus`: indices or UUIDs (argparse turns the ValueError into a usage error)."""
    try:
        return parse_selection(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _wait_for_gpus_file(path: Path | None, timeout_s: float) -> list[GpuSelector] | None:
    """The GPUs listed in `path` once it exists and is not empty; None without a path.

    Raises:
        ValueError: the file did not appear in time, cannot be read, or lists no GPUs.
    """
    if path is None:
        return None
    deadline = time.monotonic() + timeout_s
    _log.info("waiting for the GPU list in %s", path)
    while True:
        try:
            chosen = read_gpu_list(path)
        except ValueError as err:
            raise ValueError(f"--gpus-file {path}: {err}") from None
        if chosen is not None:
            return chosen
        if time.monotonic() > deadline:
            raise ValueError(f"--gpus-file {path}: no GPU list after {timeout_s:g} s")
        time.sleep(_GPUS_FILE_POLL_S)


def _source(
    sim_url: str | None,
    selection: list[GpuSelector] | None,
    visible: VisibleDevices,
    interval_s: float,
) -> GpuSource:
    open_all: Callable[[list[GpuSelector] | None], Sequence[Gpu]]
    if sim_url is not None:
        where = f"sim-server {sim_url}"

        def open_all(chosen: list[GpuSelector] | None) -> Sequence[Gpu]:
            return open_sim_gpus(sim_url, selection=chosen)
    else:
        where = "NVML"
        open_all = open_nvml_gpus
    if selection is not None or not visible.narrows():
        return GpuSource(
            open_gpus=lambda: open_all(selection), where=where, collect_interval_s=interval_s
        )
    return GpuSource(
        open_gpus=lambda: _visible_only(open_all(None), visible),
        where=f"{where}, those {visible.describe()} leaves visible",
        collect_interval_s=interval_s,
    )


def _visible_only(gpus: Sequence[Gpu], visible: VisibleDevices) -> list[Gpu]:
    """The GPUs CUDA sees in this environment, in CUDA's order (ValueError: bad variables)."""
    by_index = {gpu.index: gpu for gpu in gpus}
    try:
        keep = visible.visible({i: gpu.uuid for i, gpu in by_index.items()})
    except ValueError:
        _close(gpus)
        raise
    _close([gpu for i, gpu in by_index.items() if i not in keep])
    return [by_index[i] for i in keep]


def _serve_until_signal(server: ExporterServer) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        _log.info("%s: shutting down", signal.Signals(signum).name)
        # shutdown() waits for serve_forever(), which runs in this (the main) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


def _close(gpus: Sequence[Gpu]) -> None:
    for gpu in gpus:
        if isinstance(gpu, NvmlGpu):
            gpu.close()


def _fail(message: str, code: int) -> int:
    print(f"jouletune exporter: {message}", file=sys.stderr)
    return code
