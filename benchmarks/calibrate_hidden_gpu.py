"""How well `jouletune calibrate` recovers a GPU whose parameters it cannot see.

    .venv/bin/python benchmarks/calibrate_hidden_gpu.py [--out DIR] [--duration 6]

A `jouletune sim-server` runs a hidden GPU: the built-in H100 with nine parameters moved 15-30%
(bandwidth and GEMM efficiencies, per-sequence host time, API-server time, loaded idle power,
SM, tensor and DRAM power), written as a GPU profile. `jouletune exporter --sim` reads its
energy. `jouletune calibrate` (a real process, loopback HTTP) measures a plan on it: closed
loops at 1, 8, 32 and 64 streams with two context lengths (128:128 and 768:128 tokens), plus
power limits of 420 and 280 W and an SM clock lock at 1185 MHz (the defaults: 60% and 40%
of the default limit, 60% of the highest clock) at 8 and 32 streams, and fits a profile.
The script then reports:

1. each parameter: hidden, built-in, fitted (and fitted from the batch sweep alone, as a
   read-only calibration would, `--fit-only --read-only` on the same measurements);
2. predictions at points the calibration never measured (other batch sizes, context lengths,
   caps and clock locks, and two batch sizes beyond the measured range), calibrated
   simulator vs the hidden GPU's simulator, both in simulated time: J/output-token, ITL
   p50, TTFT p50, power;
3. the same points measured live on the hidden server (`run_bench` over HTTP) against the
   calibrated simulator's replay of each measured run (the fit's own forward model);
4. every plan point replayed with the hidden parameters themselves against its measurement:
   what the forward model gets wrong even with the true parameters, which a fit then absorbs.

Exits 1 when a prediction within the measured batch range misses J/token or ITL p50 by more
than 5% (table 2, full calibration), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from jouletune import __version__
from jouletune.calibrate import (
    PlanPoint,
    Workload,
    replay_run,
    simulate_closed_loop,
)
from jouletune.calibrate._calibrate import load_measured, sim_setup
from jouletune.calibrate._fit import predict, relative_errors
from jouletune.calibrate._observe import Observation
from jouletune.calibrate._plan import CalibrationPlan
from jouletune.loadgen import BenchConfig, ValidityThresholds, run_bench
from jouletune.profile import GpuProfile, ProfileFigures, ProfileParameters, load_profile

# The repository root, for the tests' process helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.calibrate.hidden import BUILT_IN, HIDDEN, MODEL, SERVER_FLAGS, HeldOut, h100_setup
from tests.procs import free_port, jouletune_process

MEASURED_MAX_CONCURRENCY = 64
# The last two lie beyond the measured batch range.
HELD_OUT = [
    HeldOut(2, Workload(input_len=384, output_len=128)),
    HeldOut(4, Workload(input_len=128, output_len=128)),
    HeldOut(16, Workload(input_len=256, output_len=128)),
    HeldOut(24, Workload(input_len=512, output_len=64)),
    HeldOut(48, Workload(input_len=128, output_len=256)),
    HeldOut(48, Workload(input_len=512, output_len=128)),
    HeldOut(4, Workload(input_len=256, output_len=128), power_limit_w=250.0),
    HeldOut(16, Workload(input_len=128, output_len=128), power_limit_w=350.0),
    HeldOut(48, Workload(input_len=256, output_len=128), power_limit_w=500.0),
    HeldOut(4, Workload(input_len=256, output_len=128), sm_clock_lock_mhz=990),
    HeldOut(16, Workload(input_len=128, output_len=128), sm_clock_lock_mhz=1410),
    HeldOut(48, Workload(input_len=256, output_len=128), sm_clock_lock_mhz=1590),
    HeldOut(96, Workload(input_len=256, output_len=128)),
    HeldOut(128, Workload(input_len=512, output_len=128)),
]
FIGURES = ("j_per_output_token", "itl_ms_p50", "ttft_ms_p50", "avg_power_w")
GATED = ("j_per_output_token", "itl_ms_p50")
TOLERANCE = 0.05
# The test thresholds for short runs (tests/validity.py): points last seconds, not minutes.
CHECKS = {
    "min_window_s": "0.5",
    "min_window_output_tokens": "50",
    "min_energy_samples": "4",
    "max_sm_clock_drift": "0.5",
}


@dataclass(frozen=True)
class Servers:
    """The hidden GPU's sim-server and exporter."""

    server_url: str
    exporter_url: str


@contextmanager
def hidden_gpu(root: Path) -> Iterator[Servers]:
    """Start the hidden GPU's sim-server and its exporter; stop both on exit."""
    profile = root / "hidden.json"
    GpuProfile(
        gpu="h100-80gb",
        parameters=HIDDEN,
        sources=dict.fromkeys(ProfileParameters.model_fields, "built-in"),
        power_limits_measured=False,
    ).write(profile)
    port, exporter_port = free_port(), free_port()
    with ExitStack() as stack:
        server = stack.enter_context(
            jouletune_process(
                ["sim-server", MODEL, "--host", "127.0.0.1", "--port", str(port), *SERVER_FLAGS,
                 "--gpu-profile", str(profile)],
                port=port, health_path="/health",
            )
        )  # fmt: skip
        exporter = stack.enter_context(
            jouletune_process(
                ["exporter", "--sim", server.url, "--host", "127.0.0.1", "--port",
                 str(exporter_port)],
                port=exporter_port, health_path="/healthz",
            )
        )  # fmt: skip
        yield Servers(server_url=server.url, exporter_url=exporter.url)


def calibrate(servers: Servers, out: Path, duration_s: float) -> tuple[GpuProfile, GpuProfile]:
    """Run `jouletune calibrate` on the hidden GPU, then refit read-only; both profiles."""
    checks = [arg for k, v in CHECKS.items() for arg in ("--check", f"{k}={v}")]
    plan = [
        "--base-url", servers.server_url, "--exporter-url", servers.exporter_url,
        "--out", str(out), "--concurrency", "1,8,32,64", "--workload", "128:128",
        "--workload", "768:128", "--duration", f"{duration_s:g}", "--cap-concurrency", "8,32",
        *SERVER_FLAGS, *checks,
    ]  # fmt: skip
    _run(["calibrate", *plan])
    _run(["calibrate", "--fit-only", "--read-only", "--out", str(out), "--profile",
          str(out / "read-only.json")])  # fmt: skip
    return load_profile(out / "profile.json"), load_profile(out / "read-only.json")


def _run(args: list[str]) -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "jouletune", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"jouletune {args[0]} failed ({done.returncode}):\n{done.stderr}")
    print(f"`jouletune {' '.join(args[:2])} ...` took {time.perf_counter() - started:.0f} s")


def parameter_table(full: GpuProfile, read_only: GpuProfile) -> None:
    """Print each parameter: hidden, built-in, fitted (full and read-only)."""
    print("\n| parameter | hidden | built-in | calibrated | err | read-only | err |")
    print("|---|---|---|---|---|---|---|")
    for name in ProfileParameters.model_fields:
        hidden = getattr(HIDDEN, name)
        cells = []
        for profile in (full, read_only):
            value = getattr(profile.parameters, name)
            source = profile.sources[name]
            err = f"{value / hidden - 1:+.1%}" if hidden else ""
            cells.append(f"{value:.4g} ({source}) | {err}")
        print(f"| {name} | {hidden:.4g} | {getattr(BUILT_IN, name):.4g} | {' | '.join(cells)} |")


def predicted(params: ProfileParameters, point: HeldOut) -> ProfileFigures:
    """The simulator's figures for a held-out point, in simulated time."""
    figures = simulate_closed_loop(
        h100_setup(), params, concurrency=point.concurrency, workload=point.workload,
        duration_s=20.0, power_limit_w=point.power_limit_w,
        sm_clock_lock_mhz=point.sm_clock_lock_mhz,
    )  # fmt: skip
    assert figures is not None, "a 20 s closed loop has a steady state"
    return figures


def _label(point: HeldOut) -> str:
    beyond = " (beyond)" if point.concurrency > MEASURED_MAX_CONCURRENCY else ""
    cap = f" @{point.power_limit_w:g} W" if point.power_limit_w is not None else ""
    lock = f" @{point.sm_clock_lock_mhz} MHz" if point.sm_clock_lock_mhz is not None else ""
    return f"c{point.concurrency} {point.workload.label}{cap}{lock}{beyond}"


def prediction_table(profiles: dict[str, ProfileParameters]) -> dict[str, float]:
    """Print each held-out point's error per profile; return the worst gated error of each."""
    worst = dict.fromkeys(profiles, 0.0)
    head = " | ".join(
        f"{name} {f}" for name in profiles for f in ("J/tok", "ITL p50", "TTFT p50", "W")
    )
    print(f"\n| point | hidden J/tok | hidden ITL p50 ms | {head} |")
    print("|---|---|---|" + "---|" * 4 * len(profiles))
    for point in HELD_OUT:
        truth = predicted(HIDDEN, point)
        cells = []
        for name, params in profiles.items():
            sim = predicted(params, point)
            for figure in FIGURES:
                error = getattr(sim, figure) / getattr(truth, figure) - 1
                cells.append(f"{error:+.1%}")
                if figure in GATED and point.concurrency <= MEASURED_MAX_CONCURRENCY:
                    worst[name] = max(worst[name], abs(error))
        print(
            f"| {_label(point)} | {truth.j_per_output_token:.4f} | {truth.itl_ms_p50:.2f} | "
            f"{' | '.join(cells)} |"
        )
    return worst


async def live_table(servers: Servers, full: GpuProfile, duration_s: float) -> None:
    """Measure the held-out points live and compare the calibrated replay of each run."""
    print(
        "\n| point | measured J/tok | sim | err | ITL p50 ms | sim | err "
        "| TTFT p50 ms | sim | err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, point in enumerate(p for p in HELD_OUT if p.as_found):
        concurrency, workload = point.concurrency, point.workload
        result = await run_bench(
            BenchConfig(
                base_url=servers.server_url, exporter_urls=[servers.exporter_url],
                random_input_len=workload.input_len, random_output_len=workload.output_len,
                max_concurrency=concurrency, num_prompts=concurrency * 100,
                duration_s=duration_s, seed=1000 + i, save_detailed=True,
                validity=ValidityThresholds.model_validate(CHECKS),
            )
        )  # fmt: skip
        obs = Observation.from_result(
            PlanPoint(concurrency=concurrency, workload=workload), result, result_file=""
        )
        sim = replay_run(
            h100_setup(), full.parameters, requests=obs.requests, concurrency=obs.concurrency,
            duration_s=obs.duration_s, power_limit_w=obs.power_limit_w,
            turnarounds_s=obs.turnarounds_s,
        )  # fmt: skip
        assert sim is not None, "the replay of a measured run has a window"
        row = f"| {_label(point)}"
        for figure in ("j_per_output_token", "itl_ms_p50", "ttft_ms_p50"):
            m, s = getattr(obs.measured, figure), getattr(sim, figure)
            row += f" | {m:.4g} | {s:.4g} | {s / m - 1:+.1%}"
        print(row + " |")


def truth_table(out: Path) -> None:
    """Replay each measured plan point with the hidden parameters; print its errors."""
    plan = CalibrationPlan.model_validate_json((out / "plan.json").read_text())
    observations = [m.observation for m in load_measured(plan, out)]
    replays = predict(sim_setup(plan), HIDDEN, observations)
    figures = (*GATED, "ttft_ms_p50", "output_tok_s")
    print("\n| plan point, hidden parameters' replay | J/tok | ITL p50 | TTFT p50 | tok/s |")
    print("|---|---|---|---|---|")
    for obs, sim in zip(observations, replays, strict=True):
        errors = relative_errors(obs.measured, sim)
        cells = [f"{errors[f]:+.1%}" if f in errors else "-" for f in figures]
        print(f"| {obs.point.name} | {' | '.join(cells)} |")


def main(argv: list[str] | None = None) -> int:
    """Calibrate against the hidden GPU and report; exit 1 on a miss beyond 5%."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="keep the calibration here (default: temp)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per point")
    args = parser.parse_args(argv)
    print(
        f"# calibrate_hidden_gpu: jouletune {__version__}, Python {platform.python_version()}, "
        f"{platform.machine()} {os.cpu_count()} CPUs; model {MODEL} on a hidden h100-80gb; "
        f"{args.duration:g} s per point"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        with hidden_gpu(out) as servers:
            full, read_only = calibrate(servers, out, args.duration)
            parameter_table(full, read_only)
            worst = prediction_table(
                {"calibrated": full.parameters, "read-only": read_only.parameters,
                 "built-in": BUILT_IN}
            )  # fmt: skip
            asyncio.run(live_table(servers, full, args.duration))
            truth_table(out)
    print(
        "\nworst J/token or ITL p50 error within the measured batch range: "
        + ", ".join(f"{name} {error:.1%}" for name, error in worst.items())
    )
    return 1 if worst["calibrated"] > TOLERANCE else 0


if __name__ == "__main__":
    sys.exit(main())
