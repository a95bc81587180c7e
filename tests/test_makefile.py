"""The Makefile cannot import Python, so it spells the run-folder paths itself; this test holds
them to ``clda_deploy.artifacts.RunLayout`` (the one definition) so the two cannot drift."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clda_deploy.artifacts import METRICS_FILE, TEACHER_AFTER_METRICS, RunLayout

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_makefile_paths_follow_the_run_layout():
    database = subprocess.run(
        ["make", "-pn", "help", "RUN=runs/elsewhere"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    variables = dict(re.findall(r"^(TEACHER|STUDENT|EXPORT|BENCH) := (\S+)$", database, flags=re.MULTILINE))
    layout = RunLayout("runs/elsewhere")
    assert variables == {
        "TEACHER": str(layout.model("teacher")),
        "STUDENT": str(layout.model("student")),
        "EXPORT": str(layout.export),
        "BENCH": str(layout.bench),
    }
    makefile = (REPO / "Makefile").read_text()
    assert f"$(RUN)/teacher/{METRICS_FILE}" in makefile and f"$(RUN)/student/{TEACHER_AFTER_METRICS}" in makefile
