"""A read-only calibration on one real GPU, checked on runs of that GPU it did not fit.

    python benchmarks/calibrate_heldout.py [DIR]   # default results/h100-calibrate-heldout
    python benchmarks/calibrate_heldout.py benchmarks/results/h200-calibrate-heldout

DIR holds one vLLM server's session (`benchmarks/h100_vllm/tokenizer_session.sh` with
`SECTIONS="sweep calib"`, then `jouletune bench` runs of other workloads; its README has the
commands): `calibrate/profile.json` (the fit of `jouletune calibrate --read-only` to its own
points), and `sweep/c*.json` and `held/c*_w*.json`, runs of batch sizes and context lengths
the calibration never measured. Each held-out run is replayed as it ran (its own prompts and
closed loop, `sim_fidelity.py`'s replay) on the catalog's entry for the profile's GPU with the
built-in constants (for an H200, its datasheet and the H100's fitted constants) and on the
profile, and the
errors of both are printed side by side with each figure's worst. Predictions, not
measurements; the real figures are the runs'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sim_fidelity as fidelity

from jouletune.gpu.simulated import gpu_model
from jouletune.sim import DEFAULT_PERF

_DEFAULT = Path(__file__).resolve().parent / "results" / "h100-calibrate-heldout"
_FIGURES = ("j_per_output_token", "itl_ms_p50", "ttft_ms_p50", "avg_power_w", "output_tok_s")
_LABELS = ("J/out-tok", "ITL p50 ms", "TTFT p50 ms", "power W", "tok/s")


def print_errors(
    points: list[fidelity.RealPoint], sims: dict[str, list[fidelity.Figures]]
) -> dict[str, dict[str, float]]:
    """One table row per run: the real figure and each simulator's error; returns the worst
    error of each figure per simulator."""
    print("| run | " + " | ".join(f"{lab} real | " + " | ".join(sims) for lab in _LABELS) + " |")
    print("|---" * (1 + (1 + len(sims)) * len(_LABELS)) + "|")
    worst = {label: dict.fromkeys(_FIGURES, 0.0) for label in sims}
    for i, point in enumerate(points):
        cells = []
        for name in _FIGURES:
            real = getattr(point.figures, name)
            errs = []
            for label, figures in sims.items():
                err = getattr(figures[i], name) / real - 1
                worst[label][name] = max(worst[label][name], err, key=abs)
                errs.append(f"{err:+.1%}")
            cells.append(f"{real:.4g} | " + " | ".join(errs))
        print(f"| {point.name} | " + " | ".join(cells) + " |")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", default=_DEFAULT)
    folder = parser.parse_args().folder
    profile = folder / "calibrate" / "profile.json"
    if not profile.is_file():
        print(f"calibrate_heldout: error: no calibrate/profile.json in {folder}", file=sys.stderr)
        return 2
    try:
        points = sorted(fidelity.load_points(folder), key=lambda p: p.window_start_unix_s)
        calibrated = fidelity.simulator(profile)  # reads and checks the profile
        # The simulator before the calibration: the catalog's entry for the profile's GPU (an
        # H200's from its datasheet) and the built-in constants.
        catalog = (gpu_model(calibrated[0].key), DEFAULT_PERF)
        simulators = {"built-in": catalog, "profile": calibrated}
    except fidelity.InputError as err:
        print(f"calibrate_heldout: error: {err}", file=sys.stderr)
        return 2
    sims = {
        label: fidelity.simulate_server(points, gpu=gpu, perf=perf)
        for label, (gpu, perf) in simulators.items()
    }
    print(f"# {len(points)} held-out runs of {folder}, replayed on the catalog GPU and {profile}")
    for label, errors in print_errors(points, sims).items():
        print(f"worst, {label}: " + ", ".join(f"{n} {e:+.1%}" for n, e in errors.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
