"""Evaluation of a trained run (rows, resume, summary) and separate.py on rendered recordings."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from spatialsep_jax.configs import bilateral
from spatialsep_jax import evaluation, train
from tests.conftest import ROOT, smoke_config


@pytest.fixture(scope="module")
def trained_run(smoke_dataset, tmp_path_factory):
  shards, cache = smoke_dataset
  config = smoke_config(bilateral, shards, cache, train__num_steps=3)
  workdir = str(tmp_path_factory.mktemp("bilateral_run"))
  train.train_and_evaluate(config, workdir, progress=False)
  return config, workdir


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_evaluation_writes_one_row_per_mixture_and_resumes(trained_run):
  config, workdir = trained_run
  summary = evaluation.run_evaluation(config, workdir, progress=False)
  rows_path = os.path.join(summary["out_dir"], "rows.csv")
  rows = _rows(rows_path)
  assert len(rows) == summary["num_examples"] == config.data.num_examples.test
  assert sorted(int(r["example_id"]) for r in rows) == list(range(len(rows)))
  # SI-SDRi is the estimate's SI-SDR minus the mixture's, per row.
  for r in rows:
    assert float(r["sisdr_improvement"]) == pytest.approx(
        float(r["sisdr"]) - float(r["sisdr_mixture"]), abs=1e-6)
  overall = summary["overall"]["sisdr_improvement"]
  assert overall["mean"] == pytest.approx(np.mean([float(r["sisdr_improvement"]) for r in rows]))
  # An interrupted evaluation: keep the first three rows, rerun, the rest is filled in.
  with open(rows_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows[:3])
  again = evaluation.run_evaluation(config, workdir, progress=False)
  resumed = _rows(rows_path)
  assert len(resumed) == len(rows) and resumed[:3] == rows[:3]
  assert again["overall"]["sisdr_improvement"]["mean"] == pytest.approx(overall["mean"], abs=1e-6)
  for name in ("summary.json", "summary.md", "sisdri_by_condition.png"):
    assert os.path.exists(os.path.join(summary["out_dir"], name))


def _launch(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_separate_handles_rendered_recordings_other_rates_and_wrong_channels(trained_run,
                                                                             tmp_path):
  config, workdir = trained_run
  common = ["--config=" + os.path.join(ROOT, "configs", "bilateral.py") + ":smoke",
            f"--config.data.shards_dir={config.data.shards_dir}",
            f"--config.data.cache_dir={config.data.cache_dir}",
            "--config.train.num_steps=3"]
  wav = str(tmp_path / "mix16k.wav")
  exported = _launch("export_mixture.py", *common, "--index=1", f"--out={wav}", "--rate=16000")
  assert exported.returncode == 0, exported.stderr
  six_channels, rate = soundfile.read(wav)
  assert rate == 16000 and six_channels.shape[1] == 6
  two_channels = str(tmp_path / "two.wav")  # the model's own channels, at the data's rate
  soundfile.write(two_channels, six_channels[::2, [2, 5]], 8000)
  for path, expected_rate in ((wav, 16000), (two_channels, 8000)):
    result = _launch("separate.py", *common, f"--workdir={workdir}", f"--out={tmp_path}", path)
    assert result.returncode == 0, result.stderr
    outputs = [line for line in result.stdout.splitlines() if line.endswith(".wav")]
    assert len(outputs) == 2, result.stdout
    for output in outputs:
      audio, out_rate = soundfile.read(output)
      assert out_rate == expected_rate and abs(len(audio) - len(soundfile.read(path)[0])) <= 2
      assert np.isfinite(audio).all() and np.abs(audio).max() > 0
  three = str(tmp_path / "three.wav")
  soundfile.write(three, six_channels[:, :3], 16000)
  result = _launch("separate.py", *common, f"--workdir={workdir}", three)
  assert result.returncode == 2
  assert "has 3 channels but this model takes 2" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_evaluation_with_float16_host_audio_matches_float32(trained_run, tmp_path):
  """data.host_audio_dtype=float16 (the GPU setting) evaluates and saves example wavs."""
  import shutil
  config, workdir = trained_run
  reference = evaluation.run_evaluation(config, workdir, progress=False)
  half_dir = str(tmp_path / "half")
  shutil.copytree(workdir, half_dir, ignore=shutil.ignore_patterns("eval"))
  half = config.copy_and_resolve_references()
  half.data.host_audio_dtype = "float16"
  half.eval.save_examples = 1
  summary = evaluation.run_evaluation(half, half_dir, progress=False)
  want = {r["example_id"]: float(r["sisdr_improvement"])
          for r in _rows(os.path.join(reference["out_dir"], "rows.csv"))}
  got = {r["example_id"]: float(r["sisdr_improvement"])
         for r in _rows(os.path.join(summary["out_dir"], "rows.csv"))}
  assert want.keys() == got.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=0.05)
  wavs = os.listdir(os.path.join(summary["out_dir"], "examples"))
  assert any(name.endswith("_mixture.wav") for name in wavs)
  audio, _ = soundfile.read(os.path.join(summary["out_dir"], "examples", sorted(wavs)[0]))
  assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_summary_breaks_noisy_rows_down_by_snr_and_noise_kind():
  import numpy as np
  from spatialsep_jax import evaluation
  rows = [{"example_id": i, "sisdr_improvement": float(i), "snr_db": snr, "noise_kind": kind}
          for i, (snr, kind) in enumerate([(-5.0, "babble"), (-1.0, "diffuse"), (2.0, "babble"),
                                           (7.0, "diffuse"), (float("inf"), "diffuse")])]
  groups = evaluation.summarize_rows(rows)["breakdowns"]
  assert groups["snr"]["SNR < -3 dB"]["sisdr_improvement"]["mean"] == 0.0
  assert set(groups["snr"]) == {"SNR < -3 dB", "SNR -3..0 dB", "SNR 0..5 dB", "SNR >= 5 dB"}
  assert groups["noise_kind"]["babble"]["sisdr_improvement"]["mean"] == np.mean([0.0, 2.0])
  assert groups["noise_kind"]["diffuse"]["sisdr_improvement"]["n"] == 3
  columns = evaluation._scene_columns({"example_id": np.array([4]), "noise_kind": np.array([1]),
                                       "snr_db": np.array([2.5])}, 0, ("diffuse", "babble"))
  assert columns == {"example_id": 4, "noise_kind": "babble", "snr_db": 2.5}
