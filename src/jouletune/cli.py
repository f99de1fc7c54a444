"""The `jouletune` command: one sub-command per component, each parsed by its own module.

Sub-commands import their component only when chosen, so `jouletune bench` never pays for
Kopf or Optuna at start-up.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module, function, one-line help). Each function takes argv and returns an
# exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sim-server": ("jouletune.sim.cli", "main", "simulated vLLM server on a simulated GPU"),
    "exporter": ("jouletune.exporter.cli", "main", "NVML energy exporter for Prometheus"),
    "bench": ("jouletune.loadgen.cli", "main", "measure one serving configuration"),
    "tune": ("jouletune.tuner.cli", "tune_main", "search the energy/latency Pareto front"),
    "report": ("jouletune.tuner.cli", "report_main", "rebuild the report of a tuning run"),
    "calibrate": ("jouletune.calibrate.cli", "main", "fit the simulated GPU to this GPU"),
    "operator": ("jouletune.operator.cli", "main", "Kubernetes operator for EnergyBenchmark"),
}


def _usage() -> str:
    lines = ["usage: jouletune COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `jouletune COMMAND ...` to the component that owns COMMAND."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from jouletune import __version__

        print(f"jouletune {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"jouletune: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[args[0]]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
