"""`jouletune operator`: run the EnergyBenchmark operator (or a trial, or print the CRD).

    jouletune operator --all-namespaces | --namespace NS [--namespace NS2 ...]
        [--liveness http://0.0.0.0:8080/healthz] [--metrics-port 9090] [--log-level info]
        [--trial-image IMG] [--reconcile-interval 10] [--unschedulable-timeout 300]
    jouletune operator trial [--termination-log PATH]   # inside a trial pod
    jouletune operator crd                               # the CRD YAML

Credentials: the pod's service account in a cluster, else the kubeconfig (KUBECONFIG).
Trial-pod settings also come from JOULETUNE_TRIAL_IMAGE, JOULETUNE_TRIAL_NODE_SELECTOR and
JOULETUNE_TRIAL_TOLERATIONS (JSON), as the Helm chart sets them; flags win.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

__all__ = ["main"]

_PROG = "jouletune operator"
_EXIT_USAGE = 2
_LOG_LEVELS = ("debug", "info", "warning")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(_EXIT_USAGE)


def main(argv: list[str]) -> int:
    """Dispatch `trial` and `crd`; anything else runs the operator."""
    if argv[:1] == ["trial"]:
        from jouletune.operator._trial import main as trial_main

        return trial_main(argv[1:])
    if argv[:1] == ["crd"]:
        from jouletune.operator.crd import main as crd_main

        return crd_main(argv[1:])
    return _run(_parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    # here: `trial` and `crd` need no exporter
    from jouletune.exporter import port_arg, seconds_arg

    parser = _Parser(
        prog=_PROG,
        description="Run the EnergyBenchmark operator (Kopf). Sub-commands: trial, crd.",
    )
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    scope.add_argument(
        "-n", "--namespace", action="append", metavar="NS", help="a namespace (repeatable)"
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="Kopf's health endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument("--metrics-port", type=port_arg, help="serve Prometheus /metrics here")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics")
    parser.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    parser.add_argument("--trial-image", help="jouletune image of trial pods' sidecars")
    parser.add_argument(
        "--image-pull-policy", choices=("Always", "IfNotPresent", "Never"), help="of trial pods"
    )
    parser.add_argument(
        "--reconcile-interval",
        type=seconds_arg,
        metavar="S",
        help="seconds between looks at a benchmark when no pod event arrives (default 10)",
    )
    parser.add_argument(
        "--unschedulable-timeout",
        type=seconds_arg,
        metavar="S",
        help="seconds a trial pod may stay Unschedulable (default 300)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="join this Kopf peering (needs kopfpeerings RBAC); default: standalone",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    import kopf
    from kubernetes.config import ConfigException
    from prometheus_client import CollectorRegistry, start_http_server

    from jouletune.operator._config import ConfigError, OperatorConfig
    from jouletune.operator._handlers import Operator
    from jouletune.operator._kube import KubeApi
    from jouletune.operator._metrics import OperatorMetrics

    try:
        config = OperatorConfig.from_env(
            os.environ,
            trial_image=args.trial_image,
            image_pull_policy=args.image_pull_policy,
            reconcile_interval_s=args.reconcile_interval,
            unschedulable_timeout_s=args.unschedulable_timeout,
        )
        KubeApi.from_environment()  # fail here, in one line, rather than inside Kopf
    except ConfigError as err:
        return _fail(str(err))
    except ConfigException as err:
        return _fail(f"no Kubernetes credentials (service account or kubeconfig): {err}")
    registry = CollectorRegistry()
    if args.metrics_port is not None:
        try:
            start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
        except OSError as err:
            return _fail(f"cannot serve metrics on port {args.metrics_port}: {err.strerror}")
    kopf.configure(debug=args.log_level == "debug", quiet=args.log_level == "warning")
    operator = Operator(config=config, metrics=OperatorMetrics(registry=registry))
    kopf.run(
        registry=operator.registry(),
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
    )
    return 0


def _fail(message: str) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr)
    return _EXIT_USAGE
