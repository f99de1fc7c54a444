"""The report a user opens: from a real `jouletune tune` against the simulator, rendered by a
real headless Chromium (tests/tuner/browser.py).

It must say the figures were predicted, not measured; name every plotted point; show each
trial's validity checks, and a failed trial's reasons beside its greyed figures.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image as mpimg
from matplotlib import pyplot as plt

from jouletune import __version__
from jouletune.loadgen._checks import Evidence, ValidityThresholds, run_checks
from jouletune.tuner import (
    Phase,
    Point,
    Provenance,
    Recommendation,
    Study,
    TrialOutcome,
    default_storage_url,
    front,
    load_spec,
    open_storage,
    parse_spec,
    recommend,
    summarize_points,
    write_report,
)
from jouletune.tuner._plot import figure, plot_label, plot_points
from tests.tuner.browser import WINDOW, render
from tests.tuner.synthetic import figures, measured
from tests.tuner.tune_procs import run_tune, write_spec

MERGED = "the server streamed 1.54 tokens per chunk, so an ITL spans several tokens"

PREDICTED = (
    f"predicted by jouletune's simulator (jouletune {__version__}, GPU model h100-80gb, "
    "not a measurement)"
)
# The predicted banner's fill (#fff0c2 in _html.py's style), as the screenshot draws it.
BANNER_RGB = (0xFF, 0xF0, 0xC2)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny real tune on the simulator: its out folder, records and printed summary."""
    tmp = tmp_path_factory.mktemp("tuned")
    config = write_spec(tmp / "tiny.yaml", max_trials=3)
    out = tmp / "out"
    code, output = run_tune(config, out)
    assert code == 0, output
    name, spec = load_spec(config)
    study = Study.open(spec=spec, name=name, storage=open_storage(default_storage_url(out)))
    return {"out": out, "spec": spec, "records": study.records(), "output": output}


def test_recommendation_and_files_say_the_figures_were_predicted(tuned: dict[str, Any]) -> None:
    out = tuned["out"]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["provenance"] == {
        "kind": "predicted",
        "gpu": "h100-80gb",
        "driver": "simulated",
        "engine": "jouletune-sim",
        "engine_version": __version__,
        "jouletune_version": __version__,
    }
    # The tiny spec's answer has a cap (as test_tune_sim's saving check relies on), so the
    # saving is a simulated cap's: labelled a prediction, with the published evidence.
    assert rec["recommended"]["point"]["power_limit_w"] is not None
    (caveat,) = rec["caveats"]
    assert "prediction, not a measurement" in caveat and "MLPerf Inference v4.1" in caveat
    assert rec["recommended"]["provenance"]["kind"] == rec["baseline"]["provenance"]["kind"]
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["points"] and {p["provenance"]["kind"] for p in pareto["points"]} == {"predicted"}
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert rows and {r["provenance"] for r in rows} == {"predicted"}
    assert {r["provenance_detail"] for r in rows} == {PREDICTED}
    # What the CLI prints under the answer: where it comes from, and the caveat.
    printed = tuned["output"].splitlines()
    assert printed[printed.index(rec["message"]) + 1] == PREDICTED
    assert caveat in printed


def test_the_plot_names_every_point_without_overlaps(tuned: dict[str, Any]) -> None:
    spec, records = tuned["spec"], tuned["records"]
    rec = json.loads((tuned["out"] / "recommendation.json").read_text())
    points = summarize_points(records, spec)
    markers = plot_points(points, records, Recommendation.model_validate(rec), spec)
    provenance = Provenance.model_validate(rec["provenance"])
    fig = figure(markers, front(points, spec), spec=spec, provenance=provenance)
    try:
        ax = fig.axes[0]
        notes = [t for t in ax.texts if t.get_text() in {m.label for m in markers}]
        assert sorted(t.get_text() for t in notes) == sorted(m.label for m in markers)
        texts = {t.get_text() for t in notes}
        recommended = rec["recommended"]["point"]
        assert f"recommended · {plot_label(Point(**recommended))}" in texts
        assert f"baseline · {plot_label(Point(**rec['baseline']['point']))}" in texts
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        boxes = [t.get_window_extent(renderer) for t in notes]
        overlapping = [
            (a.get_text(), b.get_text())
            for i, (a, box_a) in enumerate(zip(notes, boxes, strict=True))
            for b, box_b in list(zip(notes, boxes, strict=True))[i + 1 :]
            if box_a.overlaps(box_b)
        ]
        assert not overlapping
        assert PREDICTED in ax.get_title()
    finally:
        plt.close(fig)


def test_a_browser_shows_a_report_a_user_can_trust(tuned: dict[str, Any], tmp_path: Path) -> None:
    shown = render(tuned["out"] / "report.html", tmp_path)
    probe = shown.probe
    text: str = probe["text"]
    # The banner, first thing on the page, says predicted; the verdict is said once.
    banner = probe["banner"]
    assert banner["text"].startswith("Predicted, not measured.") and PREDICTED in banner["text"]
    assert banner["height"] > 0 and banner["top"] < probe["verdict"]["top"] < 300
    assert "recommended: recommended:" not in text
    assert probe["verdict"]["text"].startswith("recommended: tp1 ")
    assert text.count("recommended: tp1 ") == 1
    assert probe["caveats"] is not None and "MLPerf Inference v4.1" in probe["caveats"]["text"]
    # The plot decoded and drawn; its alt text names each point as the labels on it do.
    image = probe["image"]
    assert image["complete"] and image["naturalWidth"] > 0 and image["shownHeight"] > 0
    pareto = json.loads((tuned["out"] / "pareto.json").read_text())
    for p in pareto["points"]:
        assert plot_label(Point(**p["point"])) in image["alt"]
    # Every trial row shows its checks.
    trials = probe["trials"]
    assert [t["number"] for t in trials] == [r.number for r in tuned["records"]]
    for row in trials:
        assert re.fullmatch(r"\d+/\d+ pass(, \d+ unknown)?", row["checks"]), row
        assert "needs at least" in row["checksTitle"]
    # The screenshot: the window's size, with the amber banner drawn near the top.
    pixels = mpimg.imread(shown.screenshot)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    top = (pixels[:300, :, :3] * 255).round()
    amber = (abs(top - BANNER_RGB) <= 2).all(axis=-1).sum()
    assert amber > 20_000, amber  # a banner the width of the page, not a speck


def test_a_failed_trial_shows_its_reasons_and_greyed_figures(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "searchSpace": {"maxNumSeqs": [16, 64], "powerLimitW": [300]},
            "slos": [{"metric": "tpot_p90", "maxMs": 12}],
            "budget": {"maxTrials": 3, "finalistRepeats": 0},
        }
    )
    study = Study.open(spec=spec, name="r", storage=open_storage(default_storage_url(tmp_path)))
    short = Evidence(
        window_s=1.2, window_output_tokens=900, energy_samples=30, counter_decreases=0,
        sm_clock_drift=0.0, temperature_drift_c=0.0, error_rate=0.0, prompt_tokens_deviation=0.0,
    )  # fmt: skip
    checks = tuple(run_checks(short, ValidityThresholds()))
    while (plan := study.ask()) is not None:
        if plan.number == 1:  # measured, but too short to count
            outcome = TrialOutcome(
                figures=figures(plan.point),
                fail_reason="invalid measurement: window_duration: 1.2s, needs at least 3s",
                checks=checks,
                duration_s=3.0,
            )
        elif plan.number == 2:  # counted, with what the bench warned of
            outcome = replace(measured(plan.point), warnings=(MERGED, "a failed scrape"))
        else:
            outcome = measured(plan.point)
        study.tell(plan, outcome)
    assert study.phase() == Phase.DONE
    records = [
        r.model_copy(update={"diagnosis": f"trial {r.number}: why"}) for r in study.records()
    ]
    rec = recommend(spec=spec, records=records, finalists=study.finalists(), done=True)
    out = tmp_path / "out"
    write_report(out, spec=spec, name="r", records=records, recommendation=rec)
    probe = render(out / "report.html", tmp_path).probe
    by_number = {t["number"]: t for t in probe["trials"]}
    failed, fine = by_number[1], by_number[0]
    assert failed["failed"] and failed["checks"] == "1/8 fail: window_duration"
    assert "fail: window_duration: 1.2s, needs at least 3s" in failed["checksTitle"]
    assert "#1 failed: invalid measurement: window_duration" in failed["details"]["text"]
    assert failed["details"]["height"] > 0
    assert failed["figureColor"] == "rgb(170, 170, 170)" != fine["figureColor"]
    assert not fine["failed"] and fine["details"] is None
    warned = by_number[2]
    assert not warned["failed"] and f"#2 warning: {MERGED}" in warned["details"]["text"]
    assert "#2 warning: a failed scrape" in warned["details"]["text"]
    with open(out / "trials.csv", newline="") as f:
        rows = {row["number"]: row for row in csv.DictReader(f)}
    assert rows["2"]["warnings"] == f"{MERGED} | a failed scrape" and rows["0"]["warnings"] == ""
    # No provenance in these records: the page says the origin is unknown, not "measured".
    assert probe["banner"]["text"].startswith("Origin unknown.")
    # The diagnosis column shows each record's sentence once records carry one.
    assert "trial 1: why" in probe["text"] and "trial 0: why" in probe["text"]
