"""`jouletune bench`: measure one serving configuration (latency, throughput, energy).

    jouletune bench --base-url http://127.0.0.1:8000 --max-concurrency 64 --num-prompts 500 \
        --exporter-url http://127.0.0.1:9400 --result-filename result.json

Flags follow `vllm bench serve`. The summary goes to stdout, the result JSON to
`--result-filename`. Exit codes: 0 valid result; 1 a result that is invalid or partial
(its JSON is still written), or a run that could not start; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jouletune.contract import ENGINE_PORT
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._errors import BenchError
from jouletune.loadgen._result import BenchResult
from jouletune.loadgen._runner import ProgressCallback, run_bench
from jouletune.loadgen._sources import EnergySource
from jouletune.loadgen._summary import print_summary

__all__ = ["main"]

_PROG = "jouletune bench"
_EXIT_OK = 0
_EXIT_FAILED = 1
_EXIT_USAGE = 2
# BenchConfig field -> the flag that sets it, for one-line validation messages.
_FLAG_OF = {
    "exporter_urls": "--exporter-url",
    "duration_s": "--duration",
    "request_timeout_s": "--request-timeout",
    "idle_timeout_s": "--idle-timeout",
    "power_settle_timeout_s": "--power-settle-timeout",
    "energy_labels": "--energy-label",
    "energy_wait_s": "--energy-wait",
    "validity": "--check",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(_EXIT_USAGE)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'inf', got {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=_PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--base-url",
        default=f"http://127.0.0.1:{ENGINE_PORT}",
        help="server URL (default: %(default)s)",
    )
    p.add_argument("--model", help="model name (default: the server's first /v1/models entry)")
    p.add_argument(
        "--tokenizer",
        help="HF id, directory or tokenizer.json the prompts are built and counted with"
        " (default: the model's, as vLLM's benchmark does; `words` for the sim's vocabulary)",
    )
    p.add_argument(
        "--endpoint",
        default="/v1/completions",
        help="API path (default: %(default)s; /v1/chat/completions also works)",
    )
    p.add_argument("--dataset-name", choices=["random", "sharegpt", "custom"], default="random")
    p.add_argument(
        "--dataset-path", help='ShareGPT JSON, or JSONL with {"prompt", "output_len"} per line'
    )
    p.add_argument(
        "--random-input-len", type=int, default=1024, help="prompt tokens (default: %(default)s)"
    )
    p.add_argument(
        "--random-output-len", type=int, default=128, help="output tokens (default: %(default)s)"
    )
    p.add_argument(
        "--random-range-ratio", type=float, default=0.0, help="lengths vary by ±ratio (default: 0)"
    )
    p.add_argument("--sharegpt-output-len", type=int, help="fix every ShareGPT output length")
    p.add_argument(
        "--num-prompts", type=int, default=1000, help="measured requests (default: %(default)s)"
    )
    p.add_argument(
        "--request-rate", type=_rate, default=math.inf, help="requests/s, or inf (default: inf)"
    )
    p.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps; 1 = Poisson"
    )
    p.add_argument("--max-concurrency", type=int, help="cap on requests in flight (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-filename", help="result JSON (default: jouletune-bench-<time>.json)")
    p.add_argument(
        "--exporter-url",
        action="append",
        default=[],
        dest="exporter_urls",
        help="energy exporter (repeat: one per GPU node or pod)",
    )
    p.add_argument(
        "--energy-source",
        choices=[s.value for s in EnergySource],
        default=EnergySource.JOULETUNE.value,
        help="whose series the exporters (or Prometheus) serve (default: %(default)s)",
    )
    p.add_argument(
        "--prometheus-url",
        help="read the energy series from this Prometheus after the run, not from exporters",
    )
    p.add_argument(
        "--energy-gpus",
        type=_csv,
        default=[],
        metavar="UUID,UUID",
        help="count only these GPUs' energy (default: every GPU the exporters serve)",
    )
    p.add_argument(
        "--energy-label",
        type=_pair,
        action="append",
        default=[],
        dest="energy_labels",
        metavar="LABEL=VALUE",
        help="count only energy series with this label value (repeat; e.g. pod=NAME)",
    )
    p.add_argument(
        "--energy-wait",
        type=float,
        default=120.0,
        dest="energy_wait_s",
        help="after the run, wait at most SECONDS for a fresh energy reading (default: 120)",
    )
    p.add_argument(
        "--server-max-num-seqs",
        type=int,
        metavar="N",
        help="the server's max_num_seqs, so the diagnosis can say how full the batch was",
    )
    p.add_argument(
        "--check",
        type=_pair,
        action="append",
        default=[],
        dest="validity",
        metavar="NAME=VALUE",
        help="a validity threshold, e.g. min_window_s=30 (repeat; see docs/measurement.md)",
    )
    p.add_argument(
        "--duration", type=float, dest="duration_s", help="stop sending new requests after SECONDS"
    )
    p.add_argument("--warmup-requests", type=int, default=0, help="unmeasured requests sent first")
    p.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate exactly max_tokens (default: on)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        dest="request_timeout_s",
        help="fail a stream silent for SECONDS (default: %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        dest="idle_timeout_s",
        help="wait at most SECONDS for the server to be idle (default: %(default)s)",
    )
    p.add_argument(
        "--power-settle-timeout",
        type=float,
        default=10.0,
        dest="power_settle_timeout_s",
        help="wait at most SECONDS for GPU power to settle; 0 skips (default: %(default)s)",
    )
    p.add_argument(
        "--save-detailed", action="store_true", help="add one entry per request to the result JSON"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p  # fmt: skip


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _config(args: argparse.Namespace) -> BenchConfig:
    fields = {k: v for k, v in vars(args).items() if k not in ("result_filename", "no_progress")}
    fields["energy_labels"] = dict(args.energy_labels)
    fields["validity"] = dict(args.validity)
    return BenchConfig.model_validate(fields)


def _validation_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    flag = _FLAG_OF.get(loc[0], "--" + loc[0].replace("_", "-")) if loc else "arguments"
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{flag}: {msg}{more}"


def _progress_bar(enabled: bool) -> tuple[AbstractContextManager[object], ProgressCallback | None]:
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return nullcontext(), None
    bar = Progress(
        TextColumn("benchmark"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )  # fmt: skip
    task = bar.add_task("requests", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def _write(path: Path, result: BenchResult) -> None:
    path.write_text(json.dumps(result.model_dump(), indent=2, allow_nan=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run `jouletune bench ARGS`; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except ValidationError as err:
        print(f"{_PROG}: error: {_validation_line(err)}", file=sys.stderr)
        return _EXIT_USAGE
    path = Path(args.result_filename or time.strftime("jouletune-bench-%Y%m%d-%H%M%S.json"))
    bar, progress = _progress_bar(not args.no_progress)
    try:
        with bar:
            result = asyncio.run(run_bench(config, progress=progress))
    except BenchError as err:
        print(f"{_PROG}: {err}", file=sys.stderr)
        return _EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    try:
        _write(path, result)
    except OSError as err:
        print(f"{_PROG}: cannot write {path}: {err.strerror or err}", file=sys.stderr)
        return _EXIT_FAILED
    print_summary(result)
    if not result.valid:
        what = "partial result" if result.partial else "invalid result"
        print(f"{_PROG}: {what}: {result.invalid_reason} (JSON written to {path})", file=sys.stderr)
        return _EXIT_FAILED
    return _EXIT_OK
