"""jouletune.calibrate: fit the simulated GPU to a real one (`jouletune calibrate`).

    plan = CalibrationPlan(...)                      # closed loops, caps, the server's flags
    await measure_plan(plan, out_dir, gpus=..., log=print)   # points/NAME.json, one by one
    profile = fit_profile(plan, load_measured(plan, out_dir), batch_only=plan.read_only)
    profile.write(out_dir / "profile.json")          # jouletune sim-server --gpu-profile

Measures closed loops with the load generator (`jouletune.loadgen.run_bench`) on a running
server, replays each measured run in the simulator (`jouletune.sim.ClosedLoopReplay`, the
sim-server's own engine on a virtual clock), and fits the simulated GPU's parameters by least
squares so the replays match the measurements; the result is a `jouletune.profile.GpuProfile`.
`simulate_closed_loop` predicts a point nobody measured with any parameters. Layering:
calibrate imports contract, engine, gpu, loadgen, models, profile and sim; nothing imports it.
"""

from jouletune.calibrate._calibrate import Measured, fit_profile, load_measured, sim_setup
from jouletune.calibrate._fit import FIGURE_WEIGHTS, fitted_parameters
from jouletune.calibrate._measure import bench_config, measure_plan, point_path
from jouletune.calibrate._observe import Observation
from jouletune.calibrate._plan import (
    CalibrationPlan,
    PlanPoint,
    ServerSettings,
    Workload,
    plan_points,
)
from jouletune.calibrate._replay import SimSetup, replay_run, simulate_closed_loop
from jouletune.calibrate._target import CalibrationError, probe_target

__all__ = [
    "FIGURE_WEIGHTS",
    "CalibrationError",
    "CalibrationPlan",
    "Measured",
    "Observation",
    "PlanPoint",
    "ServerSettings",
    "SimSetup",
    "Workload",
    "bench_config",
    "fit_profile",
    "fitted_parameters",
    "load_measured",
    "measure_plan",
    "plan_points",
    "point_path",
    "probe_target",
    "replay_run",
    "sim_setup",
    "simulate_closed_loop",
]
