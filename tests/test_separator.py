"""The Python separation API (issue 13 part 3): a smoke-trained run exported in the pretrained
folder format, loaded back with `Separator.from_pretrained`, against `from_workdir`; input
layouts, level, silence, NaN, the launch verb and a full disk; the shipped models when present."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import flax
import jax
import numpy as np
import pytest
import soundfile

from spatialsep_jax.configs import mono
from spatialsep_jax import separator as separator_lib
from spatialsep_jax.separator import Separator
from tests.conftest import ROOT, smoke_config

ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def trained(smoke_dataset, tmp_path_factory):
  """(workdir, exported pretrained folder) of a 2-step mono:smoke run."""
  from spatialsep_jax import train
  shards, cache = smoke_dataset
  config = smoke_config(mono, shards, cache, train__num_steps=2, train__eval_every=2,
                        train__checkpoint_every=2)
  workdir = str(tmp_path_factory.mktemp("sep_run"))
  train.train_and_evaluate(config, workdir, progress=False)
  from_run = Separator.from_workdir(workdir, "best", config)
  folder = separator_lib.export_pretrained(
      str(tmp_path_factory.mktemp("pretrained") / "mono_smoke"), config, from_run.params,
      "configs/mono.py", "smoke", metrics={"note": "2 smoke steps"})
  return workdir, folder, config


def _speechlike(seconds=2.5, rate=8000, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  a = np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
  b = 0.5 * rng.normal(size=t.size) * (np.sin(2 * np.pi * 2 * t + 1) > 0)
  return (0.3 * (a + b)).astype(np.float32)


def test_exported_folder_has_the_agreed_format_and_loads_back(trained):
  workdir, folder, config = trained
  assert sorted(os.listdir(folder)) == ["MODEL_CARD.md", "config.json", "metrics.json",
                                        "params.msgpack"]
  record = json.load(open(os.path.join(folder, "config.json")))
  from spatialsep_jax import train
  assert record["config_file"] == "configs/mono.py" and record["config_arg"] == "smoke"
  assert record["fingerprint"] == train.config_fingerprint(config)
  assert record["config"]["data"]["input_channels"] == ["L_tmic"]
  stored = flax.serialization.msgpack_restore(open(os.path.join(folder, "params.msgpack"),
                                                   "rb").read())
  assert {np.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(stored)} == {np.dtype(np.float16)}
  pretrained = Separator.from_pretrained(folder)
  # The rebuilt config is the trained one (tuples back from JSON lists, shards_dir included).
  assert pretrained.config.data.input_channels == ("L_tmic",)
  assert train.config_fingerprint(pretrained.config) == record["fingerprint"]
  assert {np.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(pretrained.params)} == {
      np.dtype(np.float32)}
  mixture = _speechlike()
  a = Separator.from_workdir(workdir).separate(mixture)    # config from the run's config.json
  b = pretrained.separate(mixture)
  assert a.shape == b.shape == (2, mixture.size) and np.all(np.isfinite(b))
  # float16 parameters: the same separation within float16 rounding.
  assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max() + 1e-7


def test_array_layouts_level_and_rates(trained):
  _, folder, _ = trained
  separator = Separator.from_pretrained(folder)
  mixture = _speechlike(seed=1)
  reference = separator.separate(mixture)
  np.testing.assert_allclose(separator.separate(mixture[:, None]), reference, atol=1e-6)
  np.testing.assert_allclose(separator.separate(mixture[None, :]), reference, atol=1e-6)
  six = np.zeros((mixture.size, 6), np.float32)
  six[:, 2] = mixture                                          # L_tmic is channel 2
  six[:, 0] = np.random.default_rng(0).normal(size=mixture.size)  # ignored channels
  np.testing.assert_allclose(separator.separate(six), reference, atol=1e-6)
  # The level follows the input (the model sees a normalised input either way).
  np.testing.assert_allclose(separator.separate(0.05 * mixture), 0.05 * reference, atol=1e-6)
  at_16k = separator.separate(np.repeat(mixture, 2), rate=16000)
  assert at_16k.shape == (2, 2 * mixture.size) and np.all(np.isfinite(at_16k))
  with pytest.raises(ValueError, match="has 3 channels but this model takes 1"):
    separator.separate(np.zeros((4000, 3), np.float32) + 0.1)


def test_silent_input_gives_silent_output_and_nan_is_refused(trained, tmp_path, caplog):
  _, folder, _ = trained
  separator = Separator.from_pretrained(folder)
  with caplog.at_level(logging.WARNING):
    silent = separator.separate(np.zeros(8000, np.float32))
  assert silent.shape == (2, 8000) and not silent.any() and "silent" in caplog.text
  bad = _speechlike()
  bad[123] = np.inf
  path = str(tmp_path / "bad.wav")
  soundfile.write(path, bad, 8000, subtype="FLOAT")
  with pytest.raises(ValueError, match=r"bad.wav holds 1 NaN/inf samples"):
    separator.separate(path)


def test_damaged_or_mismatched_pretrained_folders_get_one_line_errors(trained, tmp_path):
  import shutil
  _, folder, _ = trained
  damaged = str(tmp_path / "damaged")
  shutil.copytree(folder, damaged)
  data = open(os.path.join(damaged, "params.msgpack"), "rb").read()
  open(os.path.join(damaged, "params.msgpack"), "wb").write(data[:len(data) // 2])
  with pytest.raises(ValueError, match="not a readable msgpack file"):
    Separator.from_pretrained(damaged)
  other = str(tmp_path / "other")
  shutil.copytree(folder, other)
  record = json.load(open(os.path.join(other, "config.json")))
  record["config"]["model"]["bottleneck"] = 24                 # params were trained with 16
  json.dump(record, open(os.path.join(other, "config.json"), "w"))
  with pytest.raises(ValueError, match="do not fit the model"):
    Separator.from_pretrained(other)
  with pytest.raises(FileNotFoundError, match="no pretrained model 'nosuch'"):
    Separator.from_pretrained("nosuch")


def test_separate_verb_writes_wavs_and_fails_in_one_line(trained, tmp_path):
  _, folder, _ = trained
  wav = str(tmp_path / "mix.wav")
  soundfile.write(wav, _speechlike(), 8000, subtype="PCM_16")
  out = str(tmp_path / "out")
  result = subprocess.run([sys.executable, "launch/separate.py", f"--pretrained={folder}",
                           f"--out={out}", wav], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  for k in (1, 2):
    info = soundfile.info(os.path.join(out, f"mix_talker{k}.wav"))
    assert info.frames == int(2.5 * 8000) and info.subtype == "PCM_16"
  # A full disk while writing the outputs: one line naming the file, no partial wav left.
  full = str(tmp_path / "full")
  script = textwrap.dedent(f"""
    import resource, runpy, sys
    sys.path.insert(0, "launch")
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    sys.argv = ["launch/separate.py", "--pretrained={folder}", "--out={full}", {wav!r}]
    runpy.run_path("launch/separate.py", run_name="__main__")
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and len(lines) == 1, result.stderr
  assert lines[0].startswith("error: disk full writing") and "mix_talker1.wav" in lines[0]
  assert not os.listdir(full)


def _sisdr(estimate, reference):
  """Scale-invariant SDR (dB) in numpy, an independent reference for the test."""
  reference = reference - reference.mean()
  estimate = estimate - estimate.mean()
  target = np.dot(estimate, reference) / np.dot(reference, reference) * reference
  return 10 * np.log10(np.sum(target ** 2) / np.sum((estimate - target) ** 2))


@pytest.mark.parametrize("name", ["mono", "bilateral", "bilateral_ipd_cossin_zeroinit"])
def test_a_shipped_model_separates_rendered_test_mixtures(name, smoke_dataset):
  if name not in separator_lib.pretrained_names():
    pytest.skip(f"pretrained/{name} is not committed")
  from data_pipeline import loader as loader_lib
  shards, cache = smoke_dataset
  separator = Separator.from_pretrained(name)
  config = smoke_config(mono, shards, cache)
  config.data.input_channels = separator.input_channels   # the shards hold all six channels
  config.data.reference_mic = separator.config.data.reference_mic
  batch = next(iter(loader_lib.make_loader(config, shards, "test", train=False, batch_size=8,
                                           process_index=0, process_count=1)))
  improvements = []
  for mixture, sources, reference in zip(batch["mixture"], batch["sources"],
                                         batch["mixture_reference"]):
    streams = separator.separate(np.asarray(mixture, np.float32))
    assert streams.shape == sources.shape and np.all(np.isfinite(streams))
    sources = np.asarray(sources, np.float32)
    reference = np.asarray(reference, np.float32)
    pairs = [np.mean([_sisdr(streams[p[s]], sources[s]) for s in range(2)])
             for p in ((0, 1), (1, 0))]
    baseline = np.mean([_sisdr(reference, sources[s]) for s in range(2)])
    improvements.append(max(pairs) - baseline)
  # The model cards give 4.9-7 dB on their own 4-s test splits; these are 1-s crops in the
  # smoke render's small dry rooms. An untrained model scores about -25 dB here.
  assert np.mean(improvements) > 1.5, improvements
