"""The Dockerfile, checked without a daemon: hadolint and its parsed instructions."""

from __future__ import annotations

from pathlib import Path

from dockerfile_parse import DockerfileParser

from tests.deploy.tools import ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[dict[str, str]]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    parsed: list[dict[str, str]] = parser.structure
    return parsed


def _final_stage(instructions: list[dict[str, str]]) -> list[dict[str, str]]:
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def test_hadolint_finds_nothing() -> None:
    run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """Negative control: the same linter run fails on a Dockerfile with a known problem."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("pip install --no-cache-dir", "pip install"))
    proc = run([tool("hadolint"), "--failure-threshold", "info", str(bad)], check=False)
    assert proc.returncode != 0
    assert "DL3042" in proc.stdout  # pip install without --no-cache-dir


def test_final_stage_is_slim_python_non_root_with_healthcheck() -> None:
    final = _final_stage(_instructions())
    by_name: dict[str, list[str]] = {}
    for ins in final:
        by_name.setdefault(ins["instruction"], []).append(ins["value"])
    assert by_name["FROM"][0].startswith("python:") and "-slim" in by_name["FROM"][0]
    (user,) = by_name["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot can check it)"
    (healthcheck,) = by_name["HEALTHCHECK"]
    assert "JOULETUNE_HEALTH_URL" in healthcheck
    assert by_name["ENTRYPOINT"] == ['["jouletune"]']
    assert any("pip install" in v for v in by_name["RUN"])


def test_image_uid_matches_the_chart_default() -> None:
    final = _final_stage(_instructions())
    (user,) = [ins["value"] for ins in final if ins["instruction"] == "USER"]
    values = (ROOT / "charts" / "jouletune" / "values.yaml").read_text()
    assert f"runAsUser: {user.split(':')[0]}" in values


def test_build_context_keeps_what_the_copies_need() -> None:
    """Every COPY source exists and is not excluded by .dockerignore's allow-list."""
    allowed = {
        line.lstrip("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for ins in _instructions():
        if ins["instruction"] == "COPY" and "--from" not in ins["value"]:
            *sources, _dest = ins["value"].split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
