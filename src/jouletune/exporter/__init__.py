"""jouletune.exporter: GPU energy and power for Prometheus (`jouletune exporter`).

`GpuCollector` is a custom prometheus_client collector that reads the GPUs inside
`collect()`; register it in a registry you own. `make_app` wraps a registry into the WSGI app
that serves `/metrics` and `/healthz`. `port_arg` and `seconds_arg` are the argparse types of
the exporter's and the operator's port and duration flags.
"""

from jouletune.exporter._args import port_arg, seconds_arg
from jouletune.exporter._collector import GpuCollector
from jouletune.exporter._server import ExporterServer, make_app
from jouletune.exporter._source import GpuSource

__all__ = ["ExporterServer", "GpuCollector", "GpuSource", "make_app", "port_arg", "seconds_arg"]
