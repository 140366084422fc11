"""Saved estimates (eval.save_estimates) and their rescoring elsewhere (evaluate_estimates): one
file per scored row, near-lossless, scored again with other metrics on the same split."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import loader as loader_lib
from spatialsep_jax import evaluation, metrics, models, tasks
from spatialsep_jax.configs import bilateral
from tests.conftest import ROOT, smoke_config

NUM_EXAMPLES = 4


def _config(shards, cache, **overrides):
  settings = dict(eval__max_examples=NUM_EXAMPLES, eval__metrics=("sisdr",), eval__oracles=(),
                  eval__vocoder=False, eval__save_examples=0, eval__num_workers=1,
                  eval__batch_size=NUM_EXAMPLES)
  settings.update(overrides)
  return smoke_config(bilateral, shards, cache, **settings)


@pytest.fixture(scope="module")
def saved(smoke_dataset, tmp_path_factory):
  """(config, variables, eval folder) of an untrained bilateral :smoke model (its initial
  parameters: a real model, no training) evaluated with save_estimates on the session's shards."""
  shards, cache = smoke_dataset
  config = _config(shards, cache, eval__save_estimates=True)
  model = models.build_model(config)
  segment = int(config.data.segment_seconds * config.data.sample_rate)
  variables = jax.jit(model.init)(jax.random.key(0),
                                  jnp.zeros((1, segment, len(config.data.input_channels))))
  out_dir = str(tmp_path_factory.mktemp("saved") / "eval")
  evaluation.evaluate_variables(config, variables, out_dir, progress=False)
  return config, variables, out_dir


def _error_db(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return 10 * np.log10(np.sum((got - want) ** 2, axis=-1) / np.sum(want ** 2, axis=-1))


def test_every_scored_row_has_its_estimate_and_they_read_back_near_lossless(saved):
  config, variables, out_dir = saved
  folder = os.path.join(out_dir, evaluation.ESTIMATES_FOLDER)
  rows = evaluation.read_rows(os.path.join(out_dir, "rows.csv"))
  assert len(rows) == NUM_EXAMPLES
  assert sorted(os.listdir(folder)) == sorted(
      os.path.basename(evaluation.estimate_path(folder, r["example_id"])) for r in rows)
  # The model's own estimates of the same mixtures, aligned as the metrics were.
  task = tasks.get(config.eval.task)
  separate = evaluation.make_separate_fn(config, models.build_model(config))
  batch = next(iter(loader_lib.make_loader(config, config.data.shards_dir, "test", train=False,
                                           batch_size=NUM_EXAMPLES, process_index=0,
                                           process_count=1)))
  direct = np.asarray(separate(variables, jnp.asarray(batch["mixture"])))
  rate = int(config.data.sample_rate)
  for i, example_id in enumerate(batch["example_id"][:NUM_EXAMPLES]):
    est, ref, _ = task.example(direct[i], batch, i, config)
    scored = est[metrics.align_by_sisdr(est, ref)]
    back = evaluation.read_estimate(evaluation.estimate_path(folder, example_id), rate)
    assert back.shape == scored.shape == ref.shape and back.dtype == np.float32
    assert np.all(_error_db(back, scored) < -90.0), _error_db(back, scored)
  # Resume: kept files stay as they are; a file lost after its row was written is made again.
  kept = evaluation.estimate_path(folder, rows[0]["example_id"])
  lost = evaluation.estimate_path(folder, rows[1]["example_id"])
  kept_bytes, lost_bytes = open(kept, "rb").read(), open(lost, "rb").read()
  os.utime(kept, (1, 1))
  os.remove(lost)
  evaluation.evaluate_variables(config, variables, out_dir, progress=False)
  assert os.stat(kept).st_mtime == 1 and open(kept, "rb").read() == kept_bytes
  assert open(lost, "rb").read() == lost_bytes           # same estimate, same bytes
  assert len(evaluation.read_rows(os.path.join(out_dir, "rows.csv"))) == NUM_EXAMPLES
  assert not [name for name in os.listdir(folder) if name.startswith(".")]   # no temporaries


def test_saved_format_meets_its_size_and_error_budget(tmp_path):
  """100 two-second 16-kHz one-source estimates under 8 MB, each below -90 dB of error, with
  white noise at levels 0..-40 dB: FLAC's worst case (speech predicts, noise does not)."""
  rng = np.random.default_rng(0)
  rate, total, errors = 16000, 0, []
  for k in range(100):
    signal = (rng.standard_normal(2 * rate) * 0.2 * 10 ** rng.uniform(-2, 0)).astype(np.float32)
    path = str(tmp_path / f"{k}.flac")
    evaluation.write_estimate(path, signal, rate)
    total += os.path.getsize(path)
    errors.append(_error_db(evaluation.read_estimate(path, rate)[0], signal))
  assert total < 8e6, total
  assert max(errors) < -90.0, max(errors)
  silent = str(tmp_path / "silent.flac")   # a silent source and a diverged one read back as such
  evaluation.write_estimate(silent, np.stack([np.zeros(100), np.full(100, np.nan)]), rate)
  back = evaluation.read_estimate(silent, rate)
  assert np.all(back[0] == 0) and np.all(np.isnan(back[1]))
  with pytest.raises(ValueError, match="at 16000 Hz but this config's data are at 8000 Hz"):
    evaluation.read_estimate(path, 8000)


def _copy(out_dir, tmp_path, name):
  copy = str(tmp_path / name)
  shutil.copytree(out_dir, copy)
  return copy


def test_rescoring_reproduces_the_rows_and_adds_metrics(saved, tmp_path):
  config, _, out_dir = saved
  eval_dir = _copy(out_dir, tmp_path, "eval")
  estimates = os.path.join(eval_dir, evaluation.ESTIMATES_FOLDER)
  original = {r["example_id"]: r for r in evaluation.read_rows(os.path.join(eval_dir, "rows.csv"))}
  skipped_id = sorted(original)[-1]
  os.remove(evaluation.estimate_path(estimates, skipped_id))   # skipped and counted
  rescore = _config(config.data.shards_dir, config.data.cache_dir,
                    eval__metrics=("sisdr", "stoi"))
  out = str(tmp_path / "rescored")
  summary = evaluation.evaluate_estimates(rescore, estimates, out, progress=False)
  assert summary["estimates_from"] == estimates and summary["skipped_without_estimate"] == 1
  assert summary["checked_against"] == os.path.join(eval_dir, "rows.csv")
  rows = evaluation.read_rows(os.path.join(out, "rows.csv"))
  assert sorted(r["example_id"] for r in rows) == sorted(set(original) - {skipped_id})
  for row in rows:
    before = original[row["example_id"]]
    assert row["sisdr"] == pytest.approx(before["sisdr"], abs=1e-3)
    assert row["sisdr_improvement"] == pytest.approx(before["sisdr_improvement"], abs=1e-3)
    assert np.isfinite(row["stoi"]) and "stoi" not in before
    assert [k for k in row if not k.startswith("stoi")] == list(before)   # the same columns
    for key, value in before.items():                                      # the same scenes
      if not key.startswith("sisdr"):
        assert row[key] == value or (value != value and row[key] != row[key]), key
  with open(os.path.join(out, "rows.csv")) as f:
    assert f.readline().rstrip().endswith(",row_crc32")
  assert "stoi_improvement" in summary["overall"]
  for name in ("summary.json", "summary.md"):
    assert os.path.exists(os.path.join(out, name))
  # Resumable: a second call scores nothing again and keeps the rows.
  again = evaluation.evaluate_estimates(rescore, estimates, out, progress=False)
  assert evaluation.read_rows(os.path.join(out, "rows.csv")) == rows
  assert again["num_examples"] == len(rows)
  with pytest.raises(ValueError, match="holds the rows of the evaluation"):
    evaluation.evaluate_estimates(rescore, estimates, eval_dir, progress=False)


def test_rescoring_other_data_is_one_line_naming_the_example_and_the_fix(saved, tmp_path):
  config, _, out_dir = saved
  eval_dir = _copy(out_dir, tmp_path, "eval")
  estimates = os.path.join(eval_dir, evaluation.ESTIMATES_FOLDER)
  rows = evaluation.read_rows(os.path.join(eval_dir, "rows.csv"))
  tampered = rows[1]["example_id"]
  path = evaluation.estimate_path(estimates, tampered)
  shape = evaluation.read_estimate(path).shape
  noise = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  os.remove(path)
  evaluation.write_estimate(path, noise, int(config.data.sample_rate))
  with pytest.raises(ValueError) as error:
    evaluation.evaluate_estimates(config, estimates, str(tmp_path / "rescored"), progress=False)
  message = str(error.value)
  assert "differ from the data the estimates" in message and f"example {tampered} sisdr" in message
  assert "same config" in message and "seed" in message and "\n" not in message


def test_missing_estimates_are_one_line_naming_the_folder_and_the_option(saved, tmp_path):
  config, _, _ = saved
  empty = tmp_path / "estimates"
  empty.mkdir()
  for folder in (str(tmp_path / "nowhere"), str(empty)):
    with pytest.raises(ValueError) as error:
      evaluation.evaluate_estimates(config, folder, str(tmp_path / "out"), progress=False)
    message = str(error.value)
    assert message == (f"no saved estimates in {folder}; make them with an evaluation run with "
                       "--config.eval.save_estimates=True (it writes <its eval folder>/"
                       "estimates/<example_id>.flac)")
  assert not os.path.exists(tmp_path / "out")


def test_evaluate_py_rescores_saved_estimates_beside_them(saved, tmp_path):
  """launch/evaluate.py --estimates=DIR: no checkpoint, results in DIR/../rescored-<split>, the
  original rows untouched."""
  config, _, out_dir = saved
  eval_dir = _copy(out_dir, tmp_path, "eval")
  with open(os.path.join(eval_dir, "rows.csv"), "rb") as f:
    original = f.read()
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "evaluate.py"),
       "--config=" + os.path.join(ROOT, "configs", "bilateral.py") + ":smoke",
       f"--config.data.shards_dir={config.data.shards_dir}",
       f"--config.data.cache_dir={config.data.cache_dir}",
       f"--config.eval.max_examples={NUM_EXAMPLES}", "--config.eval.oracles=()",
       "--config.eval.vocoder=False", "--config.eval.metrics=('sisdr',)",
       f"--estimates={os.path.join(eval_dir, 'estimates')}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  rescored = os.path.join(eval_dir, "rescored-test")
  assert f"rows, summary and plots in {rescored}" in result.stdout
  assert len(evaluation.read_rows(os.path.join(rescored, "rows.csv"))) == NUM_EXAMPLES
  with open(os.path.join(eval_dir, "rows.csv"), "rb") as f:
    assert f.read() == original
