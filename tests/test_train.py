"""The trainer: resume equals an uninterrupted run, SIGTERM checkpoints, NaN steps are skipped,
data parallelism over 4 (fake) devices equals one device, config errors fail early."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from spatialsep_jax.configs import ild_ipd, mono
from spatialsep_jax import config_checks, summary, train
from tests.conftest import ROOT, smoke_config, xla_flags


def _losses(workdir):
  return {row["step"]: row["loss"] for row in summary.read_metrics(os.path.join(workdir, "logs"))
          if "loss" in row}


def _config(smoke_dataset, module=mono, **overrides):
  """A `:smoke` run config; the one-channel model unless a test needs the features path (it
  compiles in a fraction of the time, and the schedule/checkpoint logic is the same)."""
  shards, cache = smoke_dataset
  defaults = dict(train__log_every=1, train__eval_every=3, train__checkpoint_every=3,
                  optim__decay_every_steps=2)
  return smoke_config(module, shards, cache, **{**defaults, **overrides})


def test_resumed_run_continues_like_an_uninterrupted_one(smoke_dataset, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  result = train.train_and_evaluate(_config(smoke_dataset, ild_ipd, train__num_steps=6),
                                    straight, progress=False)
  assert result["step"] == 6 and np.isfinite(result["best"]["val_loss"])
  train.train_and_evaluate(_config(smoke_dataset, ild_ipd, train__num_steps=3), resumed,
                           progress=False)
  train.train_and_evaluate(_config(smoke_dataset, ild_ipd, train__num_steps=6), resumed,
                           progress=False)
  a, b = _losses(straight), _losses(resumed)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([b[s] for s in (4, 5, 6)], [a[s] for s in (4, 5, 6)], rtol=1e-6)
  # Checkpoints: the latest and best managers both hold steps; config saved once.
  assert os.listdir(os.path.join(resumed, "checkpoints", "latest"))
  assert os.listdir(os.path.join(resumed, "checkpoints", "best"))
  assert json.load(open(os.path.join(resumed, "config.json")))["name"] == "ild_ipd"
  # CPU keeps no allocator statistics; a rerun that takes no step keeps the training peak the
  # earlier process recorded (here a GPU's figure written into its summary).
  summary_path = os.path.join(resumed, "train_summary.json")
  summary = json.load(open(summary_path))
  assert summary["peak_device_memory_gib"] is None
  json.dump({**summary, "peak_device_memory_gib": 10.75}, open(summary_path, "w"))
  again = train.train_and_evaluate(_config(smoke_dataset, ild_ipd, train__num_steps=6,
                                           eval__after_training=False), resumed, progress=False)
  assert again["step"] == 6 and again["peak_device_memory_gib"] == 10.75
  assert json.load(open(summary_path))["peak_device_memory_gib"] == 10.75


def test_workdir_of_another_config_is_refused(smoke_dataset, tmp_path):
  # The run's config.json as the trainer writes it when a run starts (a run that trained is
  # the checkpoint-identity test of test_reliability); the refusal comes before compiling.
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  first = _config(smoke_dataset, train__num_steps=1)
  train._check_workdir_config(workdir, first, train.config_fingerprint(first))
  assert json.load(open(os.path.join(workdir, "config.json")))["name"] == "mono"
  with pytest.raises(ValueError, match="different configuration"):
    train.train_and_evaluate(_config(smoke_dataset, train__num_steps=1, optim__learning_rate=0.5),
                             workdir, progress=False)


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(smoke_dataset, tmp_path):
  shards, cache = smoke_dataset
  workdir = str(tmp_path / "run")
  command = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
             "--config=" + os.path.join(ROOT, "configs", "mono.py") + ":smoke",
             f"--config.data.shards_dir={shards}", f"--config.data.cache_dir={cache}",
             "--config.train.num_steps=100000", "--config.train.log_every=1",
             "--config.train.checkpoint_every=100000", "--config.train.eval_every=100000",
             f"--workdir={workdir}"]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  deadline = time.time() + 240
  while time.time() < deadline and len(_losses(workdir)) < 3 and process.poll() is None:
    time.sleep(0.5)
  assert process.poll() is None, process.stdout.read()
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == 0, output
  assert "checkpoint saved at step" in output
  steps = os.listdir(os.path.join(workdir, "checkpoints", "latest"))
  saved = max(int(s) for s in steps if s.isdigit())
  assert saved >= 3
  # The first run's decay interval came from num_steps=100000: schedule_steps keeps it.
  rerun = subprocess.run(command[:5] + ["--config.train.num_steps=" + str(saved + 1),
                                         "--config.train.schedule_steps=100000",
                                         "--config.train.log_every=1",
                                         "--config.eval.after_training=False",
                                         f"--workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert f"Resuming from step {saved}" in rerun.stdout


def test_nonfinite_step_is_skipped_and_counted(smoke_dataset):
  # Random targets sit below -30 dB SI-SDR, where the study's clamp zeroes the gradient.
  config = _config(smoke_dataset, ild_ipd, loss__terms__pit__clamp_db=1000.0)
  programs = train.build_programs(config)
  state = programs.init(jax.random.key(0))
  params_before = jax.tree.map(np.array, jax.device_get(state.params))  # copies: steps donate
  rng = np.random.default_rng(0)
  samples = train.example_input_shape(config)[1]
  good = {"mixture": rng.normal(size=(4, samples, 2)).astype(np.float32),
          "sources": rng.normal(size=(4, 2, samples)).astype(np.float32),
          "mixture_reference": rng.normal(size=(4, samples)).astype(np.float32)}
  bad = dict(good, mixture=np.full_like(good["mixture"], np.nan))
  state, metrics = programs.train_step(state, train.step_inputs(bad, programs.mesh))
  assert int(metrics["nonfinite_in_a_row"]) == 1 and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params_before)
  state, metrics = programs.train_step(state, train.step_inputs(good, programs.mesh))
  assert int(metrics["nonfinite_in_a_row"]) == 0 and np.isfinite(float(metrics["loss"]))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(state.params),
                         params_before)
  assert any(jax.tree.leaves(changed))


_SHARDED_SCRIPT = r"""
import jax, numpy as np
from spatialsep_jax.configs import mono
from spatialsep_jax import sharding, train
assert jax.device_count() == 4, jax.devices()
config = mono.get_config("smoke")
config.model.num_blocks = 1   # the sharding, not the depth, is under test
rng = np.random.default_rng(0)
T = train.example_input_shape(config)[1]
batch = {"mixture": rng.normal(size=(4, T, 1)).astype(np.float32),
         "sources": rng.normal(size=(4, 2, T)).astype(np.float32)}
out = {}
for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
  programs = train.build_programs(config, sharding.make_mesh(devices))
  state = programs.init(jax.random.key(0))
  inputs = train.step_inputs(batch, programs.mesh)
  assert len(inputs["mixture"].sharding.device_set) == len(devices)
  state, metrics = programs.train_step(state, inputs)
  out[name] = (float(metrics["loss"]), jax.device_get(state.params))
np.testing.assert_allclose(out["one"][0], out["four"][0], rtol=1e-5)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
             out["one"][1], out["four"][1])
try:
  bad = mono.get_config("smoke"); bad.train.batch_size = 6
  train.config_checks.check_config(bad, num_devices=4)
except train.config_checks.ConfigError as e:
  print("CONFIG_ERROR", e)
print("SHARDED_OK")
"""


def test_four_device_data_parallel_step_equals_one_device():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert "SHARDED_OK" in result.stdout, result.stdout + result.stderr
  assert "CONFIG_ERROR config.train.batch_size=6 is not divisible by the 4 devices" in result.stdout


@pytest.mark.parametrize("overrides, message", [
    (dict(data__input_channels=("L_tmic", "X_mic")), "channel 'X_mic'"),
    (dict(data__input_channels=("L_tmic",)), "needs two input channels"),
    (dict(model__feature_pair=(0, 0)), "feature_pair"),
    (dict(loss__terms={"pit": {"term": "l1"}}), "config.loss.terms.pit: unknown term 'l1'"),
    (dict(eval__task="diarisation"), "config.eval.task"),
    (dict(data__sample_rate=0), "config.data.sample_rate=0 must be a positive rate"),
    (dict(train__batch_size=0), "config.train.batch_size"),
])
def test_config_errors_name_the_field(overrides, message):
  config = ild_ipd.get_config("smoke")
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    config[section][field] = value
  with pytest.raises(config_checks.ConfigError, match=re.escape(message)):
    config_checks.check_config(config, num_devices=1)


def test_unknown_config_field_fails_on_the_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"),
       "--config=" + os.path.join(ROOT, "configs", "mono.py") + ":smoke",
       "--config.train.no_such_field=3", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "no_such_field" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_run_stops_after_too_many_nonfinite_updates(smoke_dataset, tmp_path):
  workdir = str(tmp_path / "run")
  broken = _config(smoke_dataset, train__num_steps=9, optim__learning_rate=float("inf"),
                   train__max_consecutive_nonfinite=2)
  with pytest.raises(train.NonFiniteError, match="2 non-finite losses/gradients in a row at step"):
    train.train_and_evaluate(broken, workdir, progress=False)
  # No state with skipped (non-finite) updates was saved over a good one.
  latest = os.path.join(workdir, "checkpoints", "latest")
  assert not [s for s in os.listdir(latest) if s.isdigit()] if os.path.isdir(latest) else True


def test_user_corpus_without_shards_names_the_render_command(tmp_path):
  from data_pipeline import dataset
  config = mono.get_config("smoke")
  config.data.corpus = str(tmp_path / "my_corpus")
  config.data.shards_dir = str(tmp_path / "shards")
  with pytest.raises(FileNotFoundError, match="python launch/render.py"):
    dataset.ensure_dataset(config)


def test_device_batches_keep_order_and_values():
  from spatialsep_jax import sharding
  mesh = sharding.make_mesh()
  host = [{"mixture": np.full((2, 8, 1), i, np.float16), "sources": np.full((2, 2, 8), -i, np.float16)}
          for i in range(5)]
  for depth in (0, 2, 9):
    got = list(train.device_batches(iter(host), mesh, depth))
    assert len(got) == 5
    for i, batch in enumerate(got):
      np.testing.assert_array_equal(np.asarray(batch["mixture"]), host[i]["mixture"])
      np.testing.assert_array_equal(np.asarray(batch["sources"]), host[i]["sources"])


def test_fingerprint_ignores_how_the_function_is_computed():
  from spatialsep_jax.configs import ild_ipd
  config = ild_ipd.get_config("smoke")
  same = config.copy_and_resolve_references()
  same.model.norm_impl, same.model.remat, same.data.device_prefetch = "fused", "dots", 0
  same.model.remat_blocks = 3
  same.model.depthwise_impl, same.model.uconv_impl = "pallas", "pallas"
  scanned = config.copy_and_resolve_references()
  scanned.model.scan_blocks = True  # a different parameter layout
  assert train.config_fingerprint(same) == train.config_fingerprint(config)
  assert train.config_fingerprint(scanned) != train.config_fingerprint(config)


def test_train_seed_redraws_initialisation_and_batch_order_on_the_same_data(smoke_dataset):
  """train.seed: another draw of the training randomness (initial weights, batch order) on the
  data config.seed rendered; 0 or config.seed's value is the run it always was."""
  from data_pipeline import dataset, loader as loader_lib
  config = _config(smoke_dataset)
  explicit, other = config.copy_and_resolve_references(), config.copy_and_resolve_references()
  explicit.train.seed, other.train.seed = config.seed, config.seed + 1
  assert dataset.dataset_fingerprint(other) == dataset.dataset_fingerprint(config)
  assert train.config_fingerprint(explicit) == train.config_fingerprint(config)
  assert train.config_fingerprint(other) != train.config_fingerprint(config)

  def first_batch_ids(c):
    loader = loader_lib.make_loader(c, c.data.shards_dir, "train", train=True, batch_size=4,
                                    process_index=0, process_count=1)
    return np.asarray(next(iter(loader))["example_id"])

  np.testing.assert_array_equal(first_batch_ids(explicit), first_batch_ids(config))
  assert not np.array_equal(first_batch_ids(other), first_batch_ids(config))
  programs = train.build_programs(config)
  initial = {c.train.seed: programs.init(jax.random.key(loader_lib.training_seed(c))).params
             for c in (explicit, other)}
  leaves = [jax.tree.leaves(initial[s]) for s in (config.seed, config.seed + 1)]
  assert any(not np.allclose(a, b) for a, b in zip(*leaves))


def test_extending_a_run_never_moves_its_learning_rate_boundaries(smoke_dataset, tmp_path):
  workdir = str(tmp_path / "run")
  derived = dict(optim__decay_every_steps=0, train__eval_every=3, train__checkpoint_every=3)
  train.train_and_evaluate(_config(smoke_dataset, train__num_steps=3, **derived), workdir,
                           progress=False)
  # 3 steps derive a decay every step; 9 would derive every 3: refused, with the fix named.
  with pytest.raises(ValueError, match="--config.optim.decay_every_steps=1"):
    train.train_and_evaluate(_config(smoke_dataset, train__num_steps=9, **derived), workdir,
                             progress=False)
  kept = _config(smoke_dataset, train__num_steps=6, **dict(derived, optim__decay_every_steps=1))
  result = train.train_and_evaluate(kept, workdir, progress=False)
  assert result["step"] == 6
  rates = {row["step"]: row["learning_rate"] for row in
           summary.read_metrics(os.path.join(workdir, "logs")) if "learning_rate" in row}
  # StepLR with decay 0.2 every step, logged at each step's start value.
  for step, rate in rates.items():
    assert rate == pytest.approx(1e-3 * 0.2 ** (step - 1), rel=1e-5)


def _best_step_on_disk(workdir, config):
  from spatialsep_jax import checkpoint
  programs = train.build_programs(config)
  _, _, step = checkpoint.restore_params(workdir, train.abstract_state(programs, config), "best")
  return step


@pytest.mark.parametrize("lost", ["best", "latest"])
def test_best_and_latest_agree_after_a_kill_between_the_two_saves(smoke_dataset, tmp_path, lost):
  import shutil
  workdir = str(tmp_path / "run")
  config = _config(smoke_dataset, ild_ipd, train__num_steps=6, train__eval_every=2,
                   train__checkpoint_every=4, train__keep_best=5)
  straight = train.train_and_evaluate(config, workdir, progress=False)
  # The kill between saving latest/6 and best/6 (best lost), or between best/6 and a
  # latest/6 that was never written (latest lost: the run restarts from latest/4).
  shutil.rmtree(os.path.join(workdir, "checkpoints", lost, "6"))
  again = train.train_and_evaluate(config, workdir, progress=False)
  assert again["best"]["step"] == straight["best"]["step"]
  assert _best_step_on_disk(workdir, config) == again["best"]["step"]
  assert again["best"]["val_loss"] == pytest.approx(straight["best"]["val_loss"], rel=1e-6)


def test_adamw_decays_weights_decoupled_from_the_gradient():
  """One AdamW step with a zero gradient: Adam's update is 0, so w <- w (1 - lr wd); a
  nonzero gradient adds Adam's first step -lr sign(g) (m/sqrt(v) = g/|g| at step 1)."""
  config = mono.get_config("smoke")
  config.optim.name, config.optim.weight_decay, config.optim.learning_rate = "adamw", 0.02, 1e-2
  optimizer = train.make_optimizer(config)
  params = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
  grads = {"w": np.array([0.0, 3.0, -1e-3], np.float32)}
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  expected = -1e-2 * 0.02 * params["w"] - 1e-2 * np.sign(grads["w"]) * (np.abs(grads["w"]) > 0)
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-4, atol=1e-7)
  config.optim.name = "sgd"
  with pytest.raises(ValueError, match="optim.name='sgd'"):
    train.make_optimizer(config)


def test_flattened_optimizer_gives_the_same_updates_and_still_skips_nonfinite_steps():
  """optim.flatten (optax.flatten around the guarded AdamW) against the tree optimizer: the
  same updates over three steps on a tree of mixed shapes, the same non-finite count."""
  config = mono.get_config("smoke")
  config.optim.name, config.optim.weight_decay, config.optim.learning_rate = "adamw", 0.02, 1e-2
  tree = train.make_optimizer(config)
  config.optim.flatten = True
  flat = train.make_optimizer(config)
  rng = np.random.default_rng(0)
  params = {"a": rng.normal(size=(3, 4)).astype(np.float32),
            "b": {"c": rng.normal(size=(5,)).astype(np.float32), "d": np.float32(0.3)}}
  states = [tree.init(params), flat.init(params)]
  for step in range(3):
    grads = jax.tree_util.tree_map(lambda p: rng.normal(size=np.shape(p)).astype(np.float32),
                                   params)
    if step == 1:
      grads["a"][0, 0] = np.nan
    out = [opt.update(grads, state, params) for opt, state in zip((tree, flat), states)]
    states = [o[1] for o in out]
    jax.tree_util.tree_map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-8), out[0][0], out[1][0])
    assert int(train.nonfinite_count(states[0])) == int(train.nonfinite_count(states[1])) == \
        (1 if step == 1 else 0)
