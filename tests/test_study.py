"""The study launcher end to end at smoke size: two configurations trained, evaluated, reported."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_study_trains_evaluates_and_reports_each_configuration(smoke_dataset, tmp_path):
  shards, cache = smoke_dataset
  workdir = str(tmp_path / "study")
  command = [sys.executable, os.path.join(ROOT, "launch", "study.py"), "--variant=smoke",
             f"--workdir={workdir}", "--configs=bilateral,ipd:sepnorm", "--parallel=2",
             f"--set=data.shards_dir={shards}", f"--set=data.cache_dir={cache}",
             "--set=train.num_steps=2", "--set=eval.vocoder=False",
             "--set=eval.oracles=()", "--set=eval.max_examples=4"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  for name in ("bilateral", "ipd_sepnorm"):
    assert f"[study] {name}: done" in result.stdout
  saved = open(os.path.join(workdir, "ipd_sepnorm", "config.json")).read()
  assert '"feature_norm": "separate"' in saved
  report = open(os.path.join(workdir, "report", "README.md")).read()
  for name in ("bilateral", "ipd_sepnorm"):
    assert f"| {name} |" in report
  assert "L_tmic, R_tmic" in report and "by angular separation" in report
  assert "| ipd_sepnorm - bilateral | explicit IPD, own norm" in report
  for png in ("sisdri_per_config.png", "sisdri_vs_separation.png", "training_curves.png",
              "spectrograms.png"):
    assert os.path.getsize(os.path.join(workdir, "report", png)) > 0
  # A second call skips finished configurations and rebuilds the report.
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "already trained and evaluated, skipped" in again.stdout


def test_paired_differences_match_numpy():
  import numpy as np
  import pytest
  from scipy import stats
  from spatialsep_jax.configs.proj.study import report
  rng = np.random.default_rng(0)
  def rows(values):
    return {i: {"example_id": i, "separation_deg": 10.0 * i, "sex_pair": "same-sex" if i % 2
                else "female-male", "sisdr_improvement": v} for i, v in enumerate(values)}
  a, b = rng.normal(5, 2, 20), rng.normal(3, 2, 20)
  rows_b = rows(b)
  del rows_b[19]  # only mixtures both runs evaluated are paired
  diffs = report.paired_differences(rows(a), rows_b)
  d = (a - b)[:19]
  assert diffs["all"]["n"] == 19 and diffs["all"]["mean"] == pytest.approx(d.mean())
  half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
  lo, hi = diffs["all"]["ci95"]
  assert (hi - lo) / 2 == pytest.approx(half, rel=0.05)
  assert diffs["same-sex"]["mean"] == pytest.approx(d[1::2].mean())
  assert diffs["co-located (<=15 deg)"]["n"] == 2  # separations 0 and 10 deg


def test_config_tokens_name_the_run_and_reject_sepnorm_without_features():
  import pytest
  from spatialsep_jax.configs import ild_ipd, ipd, mono
  config = ipd.get_config("smoke,uni,sepnorm")
  assert config.name == "ipd_uni_sepnorm" and config.model.feature_norm == "separate"
  assert config.data.input_channels == ("L_back", "L_tmic")
  assert ild_ipd.get_config("gpu").model.feature_norm == "joint"
  with pytest.raises(ValueError, match="sepnorm"):
    mono.get_config("sepnorm")
