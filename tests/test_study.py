"""The study launcher end to end at smoke size: two configurations trained, evaluated, reported."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_study_trains_evaluates_and_reports_each_configuration(smoke_dataset, tmp_path):
  shards, cache = smoke_dataset
  workdir = str(tmp_path / "study")
  command = [sys.executable, os.path.join(ROOT, "launch", "study.py"), "--variant=smoke",
             f"--workdir={workdir}", "--configs=mono,bilateral", "--parallel=2",
             f"--set=data.shards_dir={shards}", f"--set=data.cache_dir={cache}",
             "--set=train.num_steps=2"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "[study] mono: done" in result.stdout and "[study] bilateral: done" in result.stdout
  report = open(os.path.join(workdir, "report", "README.md")).read()
  for name in ("mono", "bilateral"):
    assert f"| {name} |" in report
  assert "L_tmic, R_tmic" in report and "by angular separation" in report
  for png in ("sisdri_per_config.png", "sisdri_vs_separation.png", "training_curves.png",
              "spectrograms.png"):
    assert os.path.getsize(os.path.join(workdir, "report", png)) > 0
  # A second call skips finished configurations and rebuilds the report.
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "already trained and evaluated, skipped" in again.stdout
