"""The core's promise: a system is a model module, loss terms and a config.

A model and a loss term registered here, in a test file, train, validate, checkpoint and
resume through `train.train_and_evaluate` with no edit to the trainer; the model carries
mutable state (batch statistics) and draws dropout from the step's PRNG key."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax.configs import mono
from spatialsep_jax import checkpoint, loss_terms, models, train
from spatialsep_jax.models import registry
from tests.conftest import smoke_config


class _GainSeparator(nn.Module):
  """Per-source learned gains of the normalised mixture: [B, T, 1] -> {"estimates" [B, S, T]}."""
  num_sources: int

  @nn.compact
  def __call__(self, mixture, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(mixture)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    gains = self.param("gains", nn.initializers.ones, (self.num_sources,))
    estimates = gains[None, :, None] * x[..., 0][:, None, :]
    return {"estimates": estimates, "gains": gains}


def _validate(config):
  if config.model.get("test_gain_sources", 0) < 1:
    raise registry.ModelConfigError("config.model.test_gain_sources must be >= 1")


@registry.register("test_gain", validate=_validate)
def _build(config):
  return _GainSeparator(int(config.model.test_gain_sources))


@loss_terms.register("test_l1", batch_keys=("sources",))
def _l1(outputs, batch, rng, *, scale=1.0):
  del rng
  error = jnp.abs(outputs["estimates"] - batch["sources"].astype(jnp.float32))
  return scale * jnp.mean(error, axis=(1, 2)), {"mean_gain": jnp.mean(outputs["gains"]) *
                                                jnp.ones(error.shape[0])}


def _config(smoke_dataset, **overrides):
  shards, cache = smoke_dataset
  config = smoke_config(mono, shards, cache, **overrides)
  config.model.name = "test_gain"
  config.model.test_gain_sources = 2
  config.loss.terms = {"l1": {"term": "test_l1", "weight": 2.0, "scale": 0.5},
                       "pit": {"term": "pit_sisdr", "weight": 0.1}}
  config.eval.oracles = ()
  return config


def test_registered_model_and_term_train_and_resume_through_the_generic_trainer(
    smoke_dataset, tmp_path):
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(_config(smoke_dataset), workdir, progress=False)
  assert result["step"] == 6
  last = result["last"]
  assert np.isfinite(last["loss/l1"]) and np.isfinite(last["loss/pit"])
  assert np.isfinite(last["l1/mean_gain"]) and np.isfinite(last["val_sisdri"])
  programs = train.build_programs(_config(smoke_dataset))
  abstract = train.abstract_state(programs, _config(smoke_dataset))
  state, meta, step = checkpoint.restore_params(workdir, abstract, "latest")
  # Batch statistics are model state, trained and checkpointed with the rest.
  stats = state.model_state["batch_stats"]["BatchNorm_0"]
  assert step == 6 and float(jnp.abs(stats["mean"]).sum()) > 0.0
  assert meta["config_fingerprint"] == train.config_fingerprint(_config(smoke_dataset))
  # The same run to 9 steps equals 6 steps then a resume (state, rng and batch order).
  longer = _config(smoke_dataset, train__num_steps=9, train__schedule_steps=6)
  resumed = train.train_and_evaluate(longer, workdir, progress=False)
  straight = train.train_and_evaluate(longer, str(tmp_path / "straight"), progress=False)
  assert resumed["last"]["loss"] == pytest.approx(straight["last"]["loss"], rel=1e-6)


def test_step_reads_only_declared_keys_and_names_a_missing_one(smoke_dataset):
  config = _config(smoke_dataset)
  programs = train.build_programs(config)
  assert set(programs.step_keys) == {"mixture", "sources", "mixture_reference"}
  config.loss.terms = {"pit": {"term": "pit_sisdr", "stems": ("noise_at_ears",),
                               "extra_outputs": "permute"}}
  programs = train.build_programs(config)
  batch = {"mixture": np.zeros((4, 8, 1), np.float32), "sources": np.zeros((4, 2, 8), np.float32),
           "mixture_reference": np.zeros((4, 8), np.float32)}
  with pytest.raises(ValueError, match=r"the batch has no \['noise_at_ears'\]"):
    programs.inputs(batch)


def test_unknown_model_and_bad_model_field_are_one_line_errors():
  from spatialsep_jax import config_checks
  config = mono.get_config("smoke")
  config.model.name = "no_such_model"
  with pytest.raises(config_checks.ConfigError, match="unknown config.model.name 'no_such_model'"):
    config_checks.check_config(config)
  config.model.name = "test_gain"
  config.model.test_gain_sources = 0
  with pytest.raises(config_checks.ConfigError, match="test_gain_sources must be >= 1"):
    config_checks.check_config(config)
  assert "sudormrf" in models.names() and "test_gain" in models.names()


def test_enhancement_task_pairs_output_k_with_target_k_through_trainer_and_evaluation(
    smoke_dataset, tmp_path):
  """One output per target, no PIT: the per-target SI-SDR term trains, and evaluation rows
  equal SI-SDR(estimate, target) - SI-SDR(mixture, target) computed here with numpy."""
  from data_pipeline import loader as loader_lib
  from spatialsep_jax import evaluation, sdr
  config = _config(smoke_dataset, train__num_steps=3, train__eval_every=3,
                   train__checkpoint_every=3)
  config.model.test_gain_sources = 1
  config.loss.terms = {"enh": {"term": "sisdr", "targets": "targets_direct:0"}}
  config.eval.task, config.eval.targets, config.eval.baseline = ("enhancement",
                                                                 "targets_direct:0", "mixture")
  config.eval.metrics, config.eval.vocoder, config.eval.max_examples = ("sisdr",), False, 4
  workdir = str(tmp_path / "enh")
  result = train.train_and_evaluate(config, workdir, progress=False)
  assert np.isfinite(result["last"]["val_sisdri"])
  summary = evaluation.run_evaluation(config, workdir, progress=False)
  rows = {r["example_id"]: r for r in evaluation.read_rows(os.path.join(summary["out_dir"],
                                                                        "rows.csv"))}
  programs, variables, _ = evaluation.load_trained(config, workdir)
  batch = next(iter(loader_lib.make_loader(config, config.data.shards_dir, "test", train=False,
                                           batch_size=4, process_index=0, process_count=1)))
  estimates = np.asarray(programs.model.estimates(variables, jnp.asarray(batch["mixture"])))
  target = batch["targets_direct"][:, 0, :, 0].astype(np.float64)        # talker 0, ref mic
  mixture = batch["mixture"][:, :, 0].astype(np.float64)
  for i in range(4):
    want = (sdr.sisdr_db(estimates[i, 0].astype(np.float64), target[i], np)
            - sdr.sisdr_db(mixture[i], target[i], np))
    assert rows[int(batch["example_id"][i])]["sisdr_improvement"] == pytest.approx(want, abs=1e-3)


class _ReferenceReader(nn.Module):
  """Estimates = gain * mixture; in training/validation also reports the clean sources it was
  given, so the test can see what reached it."""

  @nn.compact
  def __call__(self, mixture, train: bool = False, references=None):
    gain = self.param("gain", nn.initializers.ones, ())
    estimates = gain * jnp.repeat(mixture[..., :1], 2, axis=-1).transpose(0, 2, 1)
    outputs = {"estimates": estimates}
    if references is not None:
      outputs["seen_sources"] = references["sources"].astype(jnp.float32)
    return outputs


@registry.register("test_reference_reader", train_inputs=("sources",))
def _build_reference_reader(config):
  del config
  return _ReferenceReader()


@loss_terms.register("test_seen_sources")
def _seen_sources(outputs, batch, rng, **settings):
  del batch, rng, settings
  # Only defined when the model received its references: fails loudly otherwise.
  return jnp.mean(outputs["seen_sources"] ** 2, axis=(1, 2)), {}


def test_train_inputs_reach_the_model_in_training_and_validation_but_not_inference(smoke_dataset):
  config = _config(smoke_dataset)
  config.model.name = "test_reference_reader"
  config.loss.terms = {"seen": {"term": "test_seen_sources", "weight": 1.0}}
  programs = train.build_programs(config)
  assert "sources" in programs.step_keys and programs.model.train_inputs == ("sources",)
  rng = np.random.default_rng(0)
  batch = {"mixture": rng.normal(size=(2, 64, 1)).astype(np.float32),
           "sources": rng.normal(size=(2, 2, 64)).astype(np.float16),
           "mixture_reference": rng.normal(size=(2, 64)).astype(np.float32)}
  expected = np.mean(batch["sources"].astype(np.float64) ** 2, axis=(1, 2))
  loss_fn = train.make_loss_fn(config, programs.model, programs.terms)
  variables = programs.model.init(jax.random.key(0), jnp.asarray(batch["mixture"]))
  for is_train in (True, False):
    _, aux = loss_fn(variables["params"], {}, {k: jnp.asarray(v) for k, v in batch.items()},
                     jax.random.key(1), is_train)
    np.testing.assert_allclose(np.asarray(aux["per_example"]), expected, rtol=1e-6)
  outputs, _ = programs.model.apply(variables, jnp.asarray(batch["mixture"]))
  assert "seen_sources" not in outputs
  np.testing.assert_allclose(np.asarray(programs.model.estimates(variables,
                                                                 jnp.asarray(batch["mixture"]))),
                             np.repeat(batch["mixture"][..., :1], 2, -1).transpose(0, 2, 1),
                             rtol=1e-6)


def test_model_declaring_train_inputs_without_a_references_argument_is_a_one_line_error(
    smoke_dataset):

  @registry.register("test_no_references_argument", train_inputs=("sources",))
  def _build_bad(config):
    del config
    return _GainSeparator(2)

  config = _config(smoke_dataset)
  config.model.name = "test_no_references_argument"
  with pytest.raises(registry.ModelConfigError, match="references"):
    models.build_model(config)
