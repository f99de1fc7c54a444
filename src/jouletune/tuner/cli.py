"""`jouletune tune` and `jouletune report`.

    jouletune tune CONFIG.yaml [--backend sim|local] [--storage URL] [--out DIR] [--read-only]
                               [--port P] [--state-dir DIR] [--gpu-profile PROFILE.json]
                               [--energy-source jouletune|dcgm|kepler]
    jouletune report DIR [--storage URL]

Before anything else, `tune` puts back every GPU power limit and resets every SM clock lock
that a run killed mid-study (SIGKILL, the OOM killer) left changed, from the settings as
found that run wrote to the state directory, and says so, one line per GPU and setting
(`jouletune.gpu.restore_left_limits`).

Exit codes of `tune`: 0 a recommendation; 2 bad input (spec, flags, storage, a runner that
cannot serve the spec), nothing measured; 3 no measured configuration meets the SLO (the
report lists the closest); 4 every trial failed, or the study stopped at maxFailedTrials with
nothing feasible; 130 interrupted (Ctrl-C or SIGTERM): power limits restored, servers stopped,
and rerunning the same command resumes. `report` exits 0, or 2 when DIR holds no study.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import optuna
from pydantic import ValidationError
from rich.console import Console

from jouletune.contract import ENGINE_PORT
from jouletune.engine import EngineDefaults, installed_defaults
from jouletune.gpu import (
    STATE_DIR_ENV,
    GpuError,
    LimitStore,
    default_state_dir,
    refuse_left_changed,
    restore_left_limits,
)
from jouletune.loadgen import EnergySource
from jouletune.profile import load_profile
from jouletune.tuner._baseline import Baseline, BaselineError, resolve_baseline
from jouletune.tuner._local import LocalRunner
from jouletune.tuner._loop import run_study
from jouletune.tuner._progress import Progress
from jouletune.tuner._provenance import SIMULATED_DRIVER, SimProfile
from jouletune.tuner._recommend import Recommendation, recommend
from jouletune.tuner._report import write_report
from jouletune.tuner._runners import Runner, RunnerError, SimRunner
from jouletune.tuner._storage import STUDY_DB, StorageError, default_storage_url, open_storage
from jouletune.tuner._study import Phase, Study, StudyMismatchError
from jouletune.tuner.spec import Backend, BenchmarkSpec, SpecError, load_spec, parse_spec

__all__ = ["EXIT_FAILED", "EXIT_INFEASIBLE", "EXIT_INTERRUPTED", "report_main", "tune_main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130
_RUN_FILE = "run.json"  # the spec and name a report is rebuilt from
_VERDICT_EXIT = {"recommended": EXIT_OK, "infeasible": EXIT_INFEASIBLE, "failed": EXIT_FAILED}


class _UsageError(Exception):
    """Bad input: one line to stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


@dataclass(frozen=True)
class _Setup:
    name: str
    spec: BenchmarkSpec
    out_dir: Path
    study: Study
    read_only: bool
    sim_profile: SimProfile | None = None


def tune_main(argv: list[str]) -> int:
    """Run (or resume) a study; see the module docstring for flags and exit codes."""
    args = _tune_parser().parse_args(argv)
    err = Console(stderr=True)
    # What the GPU layer has to say (a limit restored, a state file left alone) is one line.
    logging.basicConfig(level=logging.WARNING, format="jouletune tune: %(message)s")
    # Optuna's INFO lines repeat what the progress display shows.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = LimitStore(args.state_dir or default_state_dir())
    try:
        name, spec = load_spec(args.config)
        # Before anything is written: the spec's gpu.readOnly makes the run read-only too.
        _restore_left(store, read_only=args.read_only or spec.gpu.read_only)
        setup = _setup(args, name, spec)
        runner = _runner(args, setup, store)
        grid = setup.study.grid
        caps = [c for c in grid.power_limits_w if c is not None]
        clocks = [c for c in grid.sm_clocks_mhz if c is not None]
        asyncio.run(runner.preflight(caps, clocks))
    except (
        _UsageError,
        SpecError,
        StorageError,
        StudyMismatchError,
        RunnerError,
        BaselineError,
        GpuError,
    ) as exc:
        print(f"jouletune tune: {exc}", file=sys.stderr)
        return EXIT_USAGE
    abandoned = setup.study.abandon_running()
    done = len([r for r in setup.study.measured() if r.role.value != "finalist"])
    if done or abandoned:
        err.print(f"resuming: {done} trials measured, {len(abandoned)} interrupted will rerun")
    try:
        with Progress(spec=setup.spec, console=err, done=done) as progress:
            study = run_study(setup.study, runner, out_dir=setup.out_dir, observer=progress)
            interrupted = asyncio.run(_until_signalled(study))
    except KeyboardInterrupt:  # Ctrl-C outside the event loop
        interrupted = True
    rec = _finish(setup)
    if interrupted:
        err.print(
            "interrupted: servers stopped, power limits restored and clock locks reset; "
            "rerun the same command to resume"
        )
        return EXIT_INTERRUPTED
    _print_answer(rec, setup.out_dir)
    return _VERDICT_EXIT.get(rec.verdict, EXIT_FAILED)


def _restore_left(store: LimitStore, *, read_only: bool) -> None:
    """Put back every limit and lock a killed run left changed (the GPU layer logs each);
    read-only, refuse to run on one instead: its cap or lock is not the GPU as found.

    Raises:
        GpuError: a limit could not be put back, or read-only and a GPU was left changed.
    """
    if read_only:
        refuse_left_changed(store)
    else:
        restore_left_limits(store)


async def _until_signalled(work: Coroutine[Any, Any, None]) -> bool:
    """Run `work`; SIGTERM, and Ctrl-C unless this process ignores SIGINT, cancel it.

    Cancelling unwinds the study: servers stop and power limits are restored on the way
    out. Returns True when a signal ended it.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # e.g. under nohup: respected
        signals.append(signal.SIGINT)
    hits: list[int] = []

    def cancel(signum: int) -> None:
        hits.append(signum)
        task.cancel()

    for signum in signals:
        loop.add_signal_handler(signum, cancel, signum)
    try:
        await task
    except asyncio.CancelledError:
        if not hits:
            raise
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return bool(hits)


def report_main(argv: list[str]) -> int:
    """Rebuild the report files of an out folder from its study."""
    parser = _Parser(prog="jouletune report", description="Rebuild a tuning run's report.")
    parser.add_argument("dir", type=Path, help="the out folder of `jouletune tune`")
    parser.add_argument("--storage", help="Optuna storage URL (default: DIR/study.db)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir: Path = args.dir
    try:
        run = _read_run(out_dir)
        spec = parse_spec(run["spec"])
        if args.storage is None and not (out_dir / STUDY_DB).is_file():
            raise _UsageError(f"{out_dir}: no {STUDY_DB}; pass --storage URL")
        storage = open_storage(args.storage or default_storage_url(out_dir))
        names = optuna.get_all_study_names(storage)
        if run["name"] not in names:
            raise _UsageError(f"{out_dir}: the storage holds no study {run['name']!r}")
        baseline = Baseline.model_validate(run["baseline"]) if "baseline" in run else None
        sim_profile = _run_sim_profile(run, out_dir)
        study = Study.open(
            spec=spec,
            name=run["name"],
            storage=storage,
            read_only=bool(run["read_only"]),
            baseline=baseline,
        )
    except (_UsageError, SpecError, StorageError, StudyMismatchError, BaselineError) as exc:
        print(f"jouletune report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup = _Setup(run["name"], spec, out_dir, study, bool(run["read_only"]), sim_profile)
    rec = _finish(setup)
    _print_answer(rec, out_dir)
    return EXIT_OK


def _print_answer(rec: Recommendation, out_dir: Path) -> None:
    """The verdict (measured or predicted, with its caveats), what the cap and the clock lock
    did by themselves, and where the report is."""
    print(rec.summary())
    if rec.cap_report is not None:
        print(rec.cap_report.sentence)
    if rec.clock_report is not None:
        print(rec.clock_report.sentence)
    print(f"report: {out_dir / 'report.html'}")


def _tune_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jouletune tune",
        description="Find the serving configuration with the fewest joules per output token "
        "within the latency SLO.",
    )
    parser.add_argument("config", type=Path, help="an EnergyBenchmark YAML (or a bare spec)")
    parser.add_argument(
        "--backend",
        choices=["sim", "local"],
        help="sim: the built-in simulator; local: vLLM on this host's GPUs "
        "(default: from the spec's backend)",
    )
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite in --out)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/NAME)")
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="never change a GPU setting (power limits, SM clock locks)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=ENGINE_PORT,
        help=f"port of the local vLLM server (default {ENGINE_PORT})",
    )
    parser.add_argument(
        "--energy-source",
        choices=[s.value for s in EnergySource],
        help="where energy is read, in place of the spec's energy.source: jouletune's "
        "exporter, or dcgm-exporter's names (served by jouletune's exporter unless the spec "
        "names energy.exporterUrl or energy.prometheusUrl), or kepler's (needs one of them)",
    )
    parser.add_argument(
        "--gpu-profile",
        type=Path,
        help="--backend sim: run the simulated GPU with this profile from `jouletune calibrate`",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where each GPU's settings as found are kept while changed, for the next run to "
        f"restore after a crash (default: ${STATE_DIR_ENV}, $XDG_STATE_HOME/jouletune, "
        "/var/lib/jouletune as root, else ~/.local/state/jouletune)",
    )
    return parser


def _setup(args: argparse.Namespace, name: str, spec: BenchmarkSpec) -> _Setup:
    spec = _with_energy_source(spec, args.energy_source)
    read_only = bool(args.read_only or spec.gpu.read_only)
    if args.read_only and spec.search_space.power_limit_w:
        raise _UsageError(
            f"--read-only: searchSpace.powerLimitW {spec.search_space.power_limit_w} asks for "
            "power limits, and read-only mode never changes them; remove them or the flag"
        )
    if args.read_only and spec.search_space.sm_clock_mhz:
        raise _UsageError(
            f"--read-only: searchSpace.smClockMhz {spec.search_space.sm_clock_mhz} asks for "
            "SM clock locks, and read-only mode never locks clocks; remove them or the flag"
        )
    out_dir: Path = args.out or Path("runs") / name
    storage_url = args.storage or spec.storage
    if storage_url is None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _UsageError(f"--out {out_dir}: {err.strerror}") from None
    sim_profile = _sim_profile(args, spec)  # before the storage: a refused profile leaves none
    _same_profile_as_before(out_dir, sim_profile)
    storage = open_storage(storage_url or default_storage_url(out_dir))
    baseline = resolve_baseline(spec, defaults=_engine_defaults(args, spec))
    study = Study.open(
        spec=spec, name=name, storage=storage, read_only=read_only, baseline=baseline
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Python mode keeps an infinite request rate (JSON mode would write null).
    run = {
        "name": name,
        "read_only": read_only,
        "spec": spec.model_dump(by_alias=True),
        "baseline": baseline.model_dump(mode="json"),
        "sim_profile": None if sim_profile is None else sim_profile.model_dump(),
    }
    (out_dir / _RUN_FILE).write_text(json.dumps(run, indent=2))
    return _Setup(name, spec, out_dir, study, read_only, sim_profile)


def _same_profile_as_before(out_dir: Path, profile: SimProfile | None) -> None:
    """Refuse to resume a study whose trials were simulated on another GPU profile (or on the
    built-in GPU): they would be reported as predicted with this one."""
    if not (out_dir / _RUN_FILE).is_file():
        return
    before = _read_run(out_dir).get("sim_profile")
    now = None if profile is None else profile.model_dump()
    if before != now:
        was = (
            "the built-in GPU"
            if not isinstance(before, dict)
            else f"--gpu-profile {before['path']}"
        )
        raise _UsageError(
            f"--out {out_dir} holds a study simulated with {was}; resume it with the same "
            "profile, or pass a new --out"
        )


def _backend(args: argparse.Namespace, spec: BenchmarkSpec) -> str:
    return str(args.backend or ("local" if spec.backend is Backend.VLLM else "sim"))


def _engine_defaults(args: argparse.Namespace, spec: BenchmarkSpec) -> EngineDefaults | None:
    """The engine's defaults the baseline falls back on: on a GPU host the installed vLLM's
    (None: the table for the spec's GPU); the simulator serves vLLM 0.24's table."""
    return installed_defaults() if _backend(args, spec) == "local" else None


def _runner(args: argparse.Namespace, setup: _Setup, store: LimitStore) -> Runner:
    if _backend(args, setup.spec) == "sim":
        # The simulator's GPUs end with its servers: nothing of theirs outlives a crash.
        return SimRunner(spec=setup.spec, read_only=setup.read_only, gpu_profile=args.gpu_profile)
    return LocalRunner(spec=setup.spec, read_only=setup.read_only, port=args.port, store=store)


def _sim_profile(args: argparse.Namespace, spec: BenchmarkSpec) -> SimProfile | None:
    """What the report says of `--gpu-profile`; refuses, before any trial, a profile the
    sim-servers would refuse, or one given for a real GPU."""
    path: Path | None = args.gpu_profile
    if path is None:
        return None
    if _backend(args, spec) != "sim":
        raise _UsageError("--gpu-profile is for --backend sim: a real GPU needs no profile")
    try:
        profile = load_profile(path)
    except ValueError as err:
        raise _UsageError(f"--gpu-profile: {err}") from None
    if profile.gpu != spec.gpu.type.lower():
        raise _UsageError(
            f"--gpu-profile {path} is for {profile.gpu}, the spec's gpu.type is {spec.gpu.type}"
        )
    made = profile.provenance
    # Only a calibration on a real GPU tells how that GPU answers a cap or a lock: one fitted
    # to a simulated GPU, or a hand-written profile, leaves every saving an uncalibrated
    # prediction, with the published evidence beside it.
    real = made is not None and made.driver_version != SIMULATED_DRIVER
    return SimProfile(
        path=str(path),
        gpu_name=made.gpu_name if made is not None else profile.gpu,
        created=made.created if made is not None else "hand-written",
        power_limits_measured=real and profile.power_limits_measured,
        clock_locks_measured=real and profile.clock_locks_measured,
    )


def _with_energy_source(spec: BenchmarkSpec, source: str | None) -> BenchmarkSpec:
    """The spec with `--energy-source` as its `energy.source`, checked as the spec is."""
    if source is None:
        return spec
    raw = spec.model_dump(by_alias=True)
    raw["energy"]["source"] = source
    try:
        return parse_spec(raw)
    except SpecError as err:
        raise _UsageError(f"--energy-source {source}: {err}") from None


def _finish(setup: _Setup) -> Recommendation:
    """The recommendation as things stand, written with the report files."""
    study = setup.study
    records = study.records()
    rec = recommend(
        spec=setup.spec,
        records=records,
        finalists=study.finalists(),
        done=study.phase() == Phase.DONE,
        baseline_source=study.baseline.source,
        sim_profile=setup.sim_profile,
    )
    write_report(
        setup.out_dir, spec=setup.spec, name=setup.name, records=records, recommendation=rec
    )
    return rec


def _run_sim_profile(run: dict[str, object], out_dir: Path) -> SimProfile | None:
    """The GPU profile a run on the simulator used (None: none, or a run from before this
    was recorded)."""
    profile = run.get("sim_profile")
    try:
        return SimProfile.model_validate(profile) if profile else None
    except ValidationError as err:
        raise _UsageError(f"{out_dir / _RUN_FILE}: sim_profile: {err.errors()[0]['msg']}") from None


def _read_run(out_dir: Path) -> dict[str, object]:
    path = out_dir / _RUN_FILE
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise _UsageError(f"{path}: cannot read: {err.strerror}") from None
    except json.JSONDecodeError:
        raise _UsageError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict) or not {"name", "spec", "read_only"} <= data.keys():
        raise _UsageError(f"{path}: not a jouletune run file")
    return data
