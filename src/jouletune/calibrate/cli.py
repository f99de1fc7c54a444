"""`jouletune calibrate`: fit the simulated GPU to a real one from a short measured plan.

    jouletune calibrate --base-url http://127.0.0.1:8000 --exporter-url http://127.0.0.1:9400 \
        --out calibration/ [--read-only] [--concurrency 1,8,32,64,128,256] \
        [--workload 512:256 --workload 1024:128] [--power-limit W ...] [--sm-clock MHZ ...] \
        [--duration 30]
    jouletune calibrate --fit-only --out calibration/ [--read-only]

Measures closed loops (`jouletune bench`) on an already running server (vLLM or a
sim-server) at each concurrency and workload, and, unless `--read-only`, at a few power
limits (default: 60% and 40% of the GPU's default limit) and an SM clock lock (default: 60%
of its highest SM clock), each at concurrency 8 and 64, always restoring the limit found and
resetting the lock; each limit and lock as found is on disk meanwhile (`--state-dir`, as
`jouletune tune` keeps it), and a calibration first puts back whatever a killed run (tune or
calibrate) left changed; `--read-only` refuses to measure on such a GPU instead. Each
point's result is saved to `OUT/points/` as it completes; a rerun keeps them and measures the
rest. Then it fits the simulator's parameters to the
points and writes `OUT/profile.json`, which `jouletune sim-server --gpu-profile` and
`jouletune tune --gpu-profile` take. Tell it the server's engine flags where they differ from
vLLM's defaults (`--max-num-seqs`, ...): the fit replays the runs on the same settings.

Exit codes: 0 a profile; 1 measuring stopped part-way (what was measured is kept; rerun to
resume); 2 bad input or nothing to measure against; 130 interrupted (limits restored).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from pydantic import ValidationError

from jouletune.calibrate._calibrate import (
    batch_limit_notes,
    fit_profile,
    load_measured,
    sim_setup,
)
from jouletune.calibrate._measure import measure_plan
from jouletune.calibrate._plan import (
    DEFAULT_CAP_CONCURRENCY,
    DEFAULT_CAP_FRACTIONS,
    DEFAULT_CLOCK_FRACTIONS,
    DEFAULT_CONCURRENCY,
    DEFAULT_WORKLOADS,
    CalibrationPlan,
    ServerSettings,
    Workload,
    plan_points,
)
from jouletune.calibrate._show import parameter_lines, point_lines, summary_lines
from jouletune.calibrate._target import CalibrationError, Target, open_target_gpus, probe_target
from jouletune.contract import ENGINE_PORT, EXPORTER_PORT
from jouletune.engine import engine_defaults
from jouletune.gpu import (
    STATE_DIR_ENV,
    Gpu,
    GpuError,
    LimitStore,
    check_clock_lock,
    check_power_limit,
    default_state_dir,
    refuse_left_changed,
    restore_left_limits,
)
from jouletune.gpu.simulated import GPU_CATALOG, gpu_model
from jouletune.loadgen import ValidityThresholds
from jouletune.models import model_arch
from jouletune.profile import GpuProfile
from jouletune.sim import DEFAULT_PERF, builtin_parameters

__all__ = ["main"]

_PROG = "jouletune calibrate"
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PLAN_FILE = "plan.json"
PROFILE_FILE = "profile.json"
_CAP_ROUND_W = 5.0
# NVML's supported graphics clocks on Hopper are 15 MHz apart.
_CLOCK_ROUND_MHZ = 15
# More closed-loop streams than any server batches: a typo, not a plan.
_MAX_STREAMS = 16384
# The server's engine flags that default to vLLM's own when not given (`ServerSettings`
# fields; the context limit, which the server reports, is taken apart).
_DEFAULTED_FLAGS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "api_server_count",
)
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def main(argv: list[str]) -> int:
    """Measure (unless --fit-only), fit, write the profile; see the module docstring."""
    args = _parser().parse_args(argv)
    # What the GPU layer has to say (a limit a killed run left, put back) is one line.
    logging.basicConfig(level=logging.WARNING, format=f"{_PROG}: %(message)s")
    try:
        _check_paths(args.out, args.profile)
        if args.fit_only:
            plan = _with_model(_with_flags(_read_plan(args.out), args, args.out), args.model)
        else:
            store = _restore_left(args.state_dir, read_only=args.read_only)
            plan, gpus = _new_plan(args)
            code = _measure(plan, args.out, gpus, store)
            if code != EXIT_OK:
                return code
        return _fit(plan, args.out, batch_only=args.read_only or plan.read_only, path=args.profile)
    except CalibrationError as err:
        print(f"{_PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # during the fit: the measured points are saved
        print(f"{_PROG}: interrupted; rerun with --fit-only to fit again", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=_PROG, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--base-url",
        default=f"http://127.0.0.1:{ENGINE_PORT}",
        help="the running server, vLLM or a sim-server (default: %(default)s)",
    )
    p.add_argument(
        "--exporter-url",
        action="append",
        default=[],
        dest="exporter_urls",
        help=f"an energy exporter of the server's GPUs, e.g. http://127.0.0.1:{EXPORTER_PORT}",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the points and profile")
    p.add_argument("--profile", type=Path, help=f"profile to write (default: OUT/{PROFILE_FILE})")
    p.add_argument("--read-only", action="store_true", help="never change a GPU setting")
    p.add_argument(
        "--fit-only",
        action="store_true",
        help="fit OUT's saved points again (--model, --max-num-seqs, --max-num-batched-tokens, "
        "--max-model-len, --gpu-memory-utilization and --api-server-count, where given, replace "
        "the plan's)",
    )
    p.add_argument(
        "--concurrency", type=_ints, default=DEFAULT_CONCURRENCY,
        help=f"closed-loop streams (default: {','.join(map(str, DEFAULT_CONCURRENCY))})",
    )  # fmt: skip
    p.add_argument(
        "--workload", type=_workload, action="append", dest="workloads",
        help="IN:OUT prompt and output tokens, repeatable (default: "
        + " and ".join(f"{i}:{o}" for i, o in DEFAULT_WORKLOADS) + ")",
    )  # fmt: skip
    p.add_argument(
        "--power-limit", type=float, action="append", default=[], dest="power_limits_w",
        help="a power limit to measure, W (default: 60%% and 40%% of the GPU's default)",
    )  # fmt: skip
    p.add_argument(
        "--sm-clock", type=int, action="append", default=[], dest="sm_clocks_mhz",
        help="an SM clock lock to measure, MHz (default: 60%% of the GPU's highest SM clock)",
    )  # fmt: skip
    p.add_argument(
        "--cap-concurrency", type=_ints, default=DEFAULT_CAP_CONCURRENCY,
        help="concurrencies measured under each power limit and clock lock (default: 8,64)",
    )  # fmt: skip
    p.add_argument(
        "--duration",
        type=_seconds,
        default=30.0,
        help="seconds of requests per point (default: 30)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt seed of the first point")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where each GPU's settings as found are kept while changed, for the next run to "
        f"restore after a crash (default: ${STATE_DIR_ENV}, $XDG_STATE_HOME/jouletune, "
        "/var/lib/jouletune as root, else ~/.local/state/jouletune)",
    )
    p.add_argument(
        "--check", action="append", default=[], type=_pair, metavar="NAME=VALUE",
        help="a validity threshold of each point, as `jouletune bench --check`",
    )  # fmt: skip
    p.add_argument(
        "--model",
        help="what the simulator replays: a catalog name, a directory with config.json or a HF "
        "id (default: the served model; with --fit-only: the plan's)",
    )
    p.add_argument("--gpu", help=f"the GPU's catalog entry: {', '.join(GPU_CATALOG)}")
    p.add_argument("--max-num-seqs", type=int, help="the server's (default: vLLM's)")
    p.add_argument("--max-num-batched-tokens", type=int, help="the server's (default: vLLM's)")
    p.add_argument(
        "--max-model-len",
        type=int,
        help="the server's (default: what it reports, else the model's)",
    )
    p.add_argument("--gpu-memory-utilization", type=float, help="the server's (default: vLLM's)")
    p.add_argument("--api-server-count", type=int, help="the server's (default: vLLM's, 1)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    return p


def _new_plan(args: argparse.Namespace) -> tuple[CalibrationPlan, list[Gpu]]:
    """Probe the server and exporters, then build and save the plan (fails before measuring);
    also the GPUs its power limits and clock locks apply to (none when read-only)."""
    if args.read_only and (args.power_limits_w or args.sm_clocks_mhz):
        raise CalibrationError(
            "--read-only never changes a GPU setting; drop --power-limit and --sm-clock"
        )
    target = probe_target(args.base_url, args.exporter_urls)
    gpu_key = _gpu_key(args.gpu, target)
    gpus = [] if args.read_only else open_target_gpus(target)
    caps = () if args.read_only else tuple(args.power_limits_w) or _default_caps(gpus)
    clocks = () if args.read_only else tuple(args.sm_clocks_mhz) or _default_clocks(gpus)
    _check_ranges(gpus, caps, clocks)
    workloads = tuple(
        args.workloads or (Workload(input_len=i, output_len=o) for i, o in DEFAULT_WORKLOADS)
    )
    try:
        plan = CalibrationPlan(
            base_url=target.base_url,
            exporter_urls=list(target.exporter_urls),
            gpu=gpu_key,
            gpu_name=target.gpu_name,
            server=_server(args, target, gpu_key),
            points=plan_points(
                concurrency=tuple(args.concurrency),
                workloads=workloads,
                power_limits_w=caps,
                sm_clocks_mhz=clocks,
                cap_concurrency=tuple(args.cap_concurrency),
            ),
            duration_s=args.duration,
            seed=args.seed,
            read_only=args.read_only,
            validity=ValidityThresholds.model_validate(dict(args.check)),
        )
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CalibrationError(f"{where}: {first['msg']}") from None
    if plan.duration_s <= plan.validity.min_window_s:
        raise CalibrationError(
            f"--duration {plan.duration_s:g}: a point's steady-state window must last at least "
            f"{plan.validity.min_window_s:g} s (minWindowS), so give each point more than that"
        )
    sim_setup(plan)  # the model must be one the simulator can replay, before any measuring
    _same_plan_as_before(args.out, plan)
    _log_assumed(args, plan.server, reported_max_model_len=target.max_model_len)
    _save_plan(args.out, plan)
    return plan, gpus


def _save_plan(out: Path, plan: CalibrationPlan) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / PLAN_FILE).write_text(plan.model_dump_json(indent=2))
    except OSError as err:
        raise CalibrationError(f"--out {out}: {err.strerror or err}") from None


def _log_assumed(
    args: argparse.Namespace, server: ServerSettings, *, reported_max_model_len: int | None
) -> None:
    """Say which engine settings the replay takes from vLLM's defaults (or the model): the
    server's own flags cannot be read from it, and a replay of other settings fits the wrong
    GPU."""
    assumed = [
        f"--{_flag(name)} {getattr(server, name)}"
        for name in _DEFAULTED_FLAGS
        if getattr(args, name) is None
    ]
    if assumed:
        _log(
            f"the replay assumes vLLM's defaults on this GPU for {', '.join(assumed)}: pass the "
            "flags the server was started with where they differ"
        )
    if args.max_model_len is None and reported_max_model_len is None:
        _log(
            f"the server does not report its context limit: the replay assumes the model's, "
            f"--max-model-len {server.max_model_len}; pass the server's where it differs"
        )


def _check_paths(out: Path, profile: Path | None) -> None:
    """--out and --profile usable, before anything is measured."""
    if out.exists() and not out.is_dir():
        raise CalibrationError(f"--out {out}: exists and is not a folder")
    if profile is not None and (profile.is_dir() or not profile.parent.is_dir()):
        why = "is a folder" if profile.is_dir() else f"its folder {profile.parent} does not exist"
        raise CalibrationError(f"--profile {profile}: {why}")


def _same_plan_as_before(out: Path, plan: CalibrationPlan) -> None:
    """Refuse to mix points measured under other conditions (GPU, server, duration, seed,
    checks) into OUT. A rerun may measure more or fewer points (a read-only rerun fits the
    batch sweep alone), and the URLs may change."""
    if not (out / PLAN_FILE).is_file():
        return
    before = _read_plan(out)
    free = {"base_url", "exporter_urls", "points", "read_only"}
    old, new = before.model_dump(exclude=free), plan.model_dump(exclude=free)
    changed = [key for key in new if old.get(key) != new[key]]
    if changed:
        raise CalibrationError(
            f"--out {out} holds points of another plan ({', '.join(changed)} differ); pass a "
            "new --out, or --fit-only to fit the points it holds"
        )


def _restore_left(state_dir: Path | None, *, read_only: bool) -> LimitStore | None:
    """The state directory, after putting back every limit and lock a killed run left
    changed there (the GPU layer logs each); read-only, None after refusing to run on such
    a GPU instead: its cap or lock is not the GPU as found."""
    store = LimitStore(state_dir or default_state_dir())
    if read_only:
        try:
            refuse_left_changed(store)
        except GpuError as err:
            raise CalibrationError(str(err)) from None
        return None
    try:
        restore_left_limits(store)
    except GpuError as err:
        raise CalibrationError(f"a GPU a killed run left changed: {err}") from None
    return store


def _measure(
    plan: CalibrationPlan, out_dir: Path, gpus: Sequence[Gpu], store: LimitStore | None
) -> int:
    try:
        asyncio.run(measure_plan(plan, out_dir, gpus=gpus, store=store, log=_log))
    except CalibrationError as err:
        print(f"{_PROG}: {err}; the points measured so far are kept in {out_dir}: rerun to "
              "measure the rest, or --fit-only to fit those", file=sys.stderr)  # fmt: skip
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted; GPU settings put back, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _fit(plan: CalibrationPlan, out_dir: Path, *, batch_only: bool, path: Path | None) -> int:
    measured = load_measured(plan, out_dir)
    for note in batch_limit_notes(plan, measured):
        _log(f"note: {note}")
    _log(f"fitting the simulator ({len(measured)} point(s) measured; any left out are marked *)")
    profile = fit_profile(
        plan,
        measured,
        batch_only=batch_only,
        progress=lambda n, cost: _log(f"  fit: replay {n} of every point, cost {cost:.4g}"),
    )
    target = path or out_dir / PROFILE_FILE
    profile.write(target)
    _print_profile(profile, target)
    return EXIT_OK


def _print_profile(profile: GpuProfile, path: Path) -> None:
    built_in = builtin_parameters(gpu_model(profile.gpu), DEFAULT_PERF)
    name = profile.provenance.gpu_name if profile.provenance else profile.gpu
    print(f"GPU profile {path}: {profile.gpu} ({name})")
    print("\n".join(parameter_lines(profile, built_in)))
    print()
    print("\n".join(point_lines(profile)))
    print()
    print("\n".join(summary_lines(profile)))


def _read_plan(out_dir: Path) -> CalibrationPlan:
    """The saved plan."""
    path = out_dir / PLAN_FILE
    try:
        plan = CalibrationPlan.model_validate_json(path.read_text())
    except OSError as err:
        raise CalibrationError(f"{path}: cannot read the plan: {err.strerror}") from None
    except ValidationError as err:
        raise CalibrationError(
            f"{path}: not a calibration plan: {err.errors()[0]['msg']}"
        ) from None
    return plan


def _with_model(plan: CalibrationPlan, model: str | None) -> CalibrationPlan:
    """`model`, where given, in place of what the simulator replays (a served directory that
    exists only on the GPU host, when fitting elsewhere); not saved to the plan."""
    if model is None:
        return plan
    return plan.model_copy(update={"server": plan.server.model_copy(update={"model": model})})


def _with_flags(plan: CalibrationPlan, args: argparse.Namespace, out_dir: Path) -> CalibrationPlan:
    """The plan with the server settings given on the command line in place of its own, saved
    to `out_dir` (so a later run that measures more with the same flags resumes it): a
    calibration measured on a server whose flags the plan did not know is fitted again."""
    given = {
        name: value
        for name in (*_DEFAULTED_FLAGS, "max_model_len")
        if (value := getattr(args, name)) is not None
    }
    if not given:
        return plan
    try:
        server = ServerSettings.model_validate({**plan.server.model_dump(), **given})
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0])
        raise CalibrationError(f"--{_flag(name)} {given[name]}: {first['msg']}") from None
    longest = max(p.workload.input_len + p.workload.output_len for p in plan.points)
    if server.max_model_len < longest:
        raise CalibrationError(
            f"--max-model-len {server.max_model_len}: the saved points sent requests of up to "
            f"{longest} tokens, so the server's limit was at least that"
        )
    if server.max_num_batched_tokens < server.max_num_seqs:
        raise CalibrationError(
            f"--max-num-batched-tokens {server.max_num_batched_tokens}: below max_num_seqs "
            f"{server.max_num_seqs}, which vLLM refuses to serve"
        )
    corrected = plan.model_copy(update={"server": server})
    _save_plan(out_dir, corrected)
    _log(f"{out_dir / PLAN_FILE}: the server's settings now " + _settings(given))
    return corrected


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _settings(values: dict[str, float | int]) -> str:
    return ", ".join(f"--{_flag(name)} {value:g}" for name, value in values.items())


def _gpu_key(flag: str | None, target: Target) -> str:
    served = next(
        (key for key, m in GPU_CATALOG.items() if m.name.lower() == target.gpu_name.lower()), None
    )
    if flag is not None:
        if flag.lower() not in GPU_CATALOG:
            raise CalibrationError(f"--gpu {flag}: the catalog has {', '.join(GPU_CATALOG)}")
        if served is not None and served != flag.lower():
            raise CalibrationError(
                f"--gpu {flag}: the exporter reports {target.gpu_name} ({served}); a profile of "
                "one GPU fitted to another's measurements would mislead"
            )
        return flag.lower()
    if served is not None:
        return served
    raise CalibrationError(
        f"the exporter's GPU {target.gpu_name!r} is not in the simulator's catalog; pass --gpu "
        f"with the nearest of {', '.join(GPU_CATALOG)} (its datasheet figures are the start)"
    )


def _server(args: argparse.Namespace, target: Target, gpu_key: str) -> ServerSettings:
    """The server's engine settings: the flags, else vLLM's defaults on this GPU."""
    model = args.model or target.model_root or target.served_model
    try:
        arch = model_arch(model)
    except ValueError as err:
        raise CalibrationError(
            f"the simulator cannot model the served model {model!r} ({err}); pass --model with "
            "a catalog name, a directory holding its config.json, or a Hugging Face id"
        ) from None
    gpu = gpu_model(gpu_key)
    defaults = engine_defaults(gpu_name=gpu.name, gpu_memory_bytes=gpu.memory_bytes)
    return ServerSettings(
        model=model,
        served_model=target.served_model,
        max_num_seqs=_given(args.max_num_seqs, defaults.max_num_seqs),
        max_num_batched_tokens=_given(args.max_num_batched_tokens, defaults.max_num_batched_tokens),
        max_model_len=_given(
            args.max_model_len, target.max_model_len or arch.max_position_embeddings
        ),
        gpu_memory_utilization=_given(args.gpu_memory_utilization, defaults.gpu_memory_utilization),
        tensor_parallel_size=args.tensor_parallel_size,
        enable_prefix_caching=args.enable_prefix_caching,
        api_server_count=_given(args.api_server_count, 1),
    )


def _given(flag: T | None, default: T) -> T:
    """A flag's value when given (0 included, for the settings' checks to refuse)."""
    return default if flag is None else flag


def _default_caps(gpus: Sequence[Gpu]) -> tuple[float, ...]:
    """60% and 40% of the GPU's default limit, rounded to 5 W, within its range."""
    rng = gpus[0].power_limit_range()
    return _below(rng.default_w, DEFAULT_CAP_FRACTIONS, _CAP_ROUND_W, rng.min_w, rng.max_w)


def _default_clocks(gpus: Sequence[Gpu]) -> tuple[int, ...]:
    """60% of the GPU's highest SM clock, rounded to 15 MHz, within its range; none where
    the GPU cannot lock its clock."""
    try:
        rng = gpus[0].sm_clock_range()
    except GpuError as err:
        _log(f"no SM clock lock in the plan: {err}")
        return ()
    clocks = _below(
        rng.max_mhz, DEFAULT_CLOCK_FRACTIONS, _CLOCK_ROUND_MHZ, rng.min_mhz, rng.max_mhz
    )
    return tuple(int(c) for c in clocks)


def _below(
    ref: float, fractions: Sequence[float], step: float, lo: float, hi: float
) -> tuple[float, ...]:
    """Each fraction of `ref`, rounded to `step` and kept within [lo, hi]; those below `ref`,
    once each, in order."""
    values = (min(max(round(ref * f / step) * step, lo), hi) for f in fractions)
    return tuple(dict.fromkeys(v for v in values if v < ref))


def _check_ranges(gpus: Sequence[Gpu], caps_w: Sequence[float], clocks_mhz: Sequence[int]) -> None:
    """Every power limit and clock lock within every GPU's range, before anything runs (the
    checks `power_limit` and `clock_lock` make before they write)."""
    try:
        for watts in caps_w:
            check_power_limit(gpus, watts)
    except (ValueError, GpuError) as err:
        raise CalibrationError(f"--power-limit: {err}") from None
    try:
        for mhz in clocks_mhz:
            check_clock_lock(gpus, mhz)
    except (ValueError, GpuError) as err:
        raise CalibrationError(f"--sm-clock: {err}") from None


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,8,32, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > _MAX_STREAMS:
        raise argparse.ArgumentTypeError(
            f"expected positive integers up to {_MAX_STREAMS}, got {text!r}"
        )
    return values


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _workload(text: str) -> Workload:
    prompt, _, output = text.partition(":")
    try:
        return Workload(input_len=int(prompt), output_len=int(output))
    except (ValueError, ValidationError):
        raise argparse.ArgumentTypeError(
            f"expected IN:OUT token lengths like 512:256 (OUT at least 2), got {text!r}"
        ) from None


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()
