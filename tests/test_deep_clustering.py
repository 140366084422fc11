"""Deep clustering: its STFT against scipy, the affinity term against the brute-force
||VV^T - YY^T||_F^2, the k-means read-out against the IBM-masked mixture, config errors, and
training + evaluation through the generic trainer on the smoke render."""

import csv
import os

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from spatialsep_jax.configs import deep_clustering as dc_config
from spatialsep_jax import config_checks, evaluation, loss_terms, models, train
from spatialsep_jax.models import deep_clustering as dc
from tests.conftest import smoke_config, with_overrides


def _scipy_stft(x, n_fft, hop):
  """[..., T] -> [..., L, F] with the module's scaling (scipy divides by the window sum)."""
  window = scipy.signal.get_window("hann", n_fft)
  _, _, spec = scipy.signal.stft(x, nperseg=n_fft, noverlap=n_fft - hop, window=window,
                                 boundary="zeros", padded=True)
  return np.swapaxes(spec, -1, -2) * window.sum()


def _scipy_masked(mixture, masks, n_fft, hop):
  """IBM-masked mixture through scipy's STFT/ISTFT: mixture [T], masks [S, L, F] -> [S, T]."""
  window = scipy.signal.get_window("hann", n_fft)
  spec = _scipy_stft(mixture, n_fft, hop) / window.sum()
  _, waves = scipy.signal.istft(np.swapaxes(masks * spec[None], -1, -2), nperseg=n_fft,
                                noverlap=n_fft - hop, window=window)
  return waves[:, :mixture.shape[-1]]


def _sources(rng, length):
  """Two talker-like sources [2, T]: harmonic tones with an on/off pattern, plus a little noise."""
  t = np.arange(length) / 8000.0
  first = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
  second = sum(np.sin(2 * np.pi * 230 * k * t + k) / k for k in range(1, 6))
  second = second * (np.arange(length) > length // 3)
  noise = 0.01 * rng.standard_normal((2, length))
  return (np.stack([first, second]) + noise).astype(np.float32)


def test_stft_matches_scipy_and_its_inverse_is_exact():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 1001)).astype(np.float32)  # T not a multiple of the hop
  for n_fft, hop in ((64, 16), (32, 16)):
    spec = np.asarray(dc.stft(jnp.asarray(x), n_fft, hop))
    assert spec.shape == (2, dc.num_frames(1001, hop), n_fft // 2 + 1)
    np.testing.assert_allclose(spec, _scipy_stft(x, n_fft, hop), atol=2e-4)
    back = np.asarray(dc.istft(jnp.asarray(spec), n_fft, hop, 1001))
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_dc_affinity_term_equals_brute_force_affinity_distance():
  rng = np.random.default_rng(1)
  n_fft, hop, length = 16, 4, 120
  sources = rng.standard_normal((2, 2, length)).astype(np.float32)
  sources[0, 1, 60:] = 0.0          # one talker stops
  sources[1, :, 90:] = 0.0          # both stop: silent bins get weight 0
  frames, bins = dc.num_frames(length, hop), n_fft // 2 + 1
  embeddings = rng.standard_normal((2, frames * bins, 3)).astype(np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
  value, metrics = dc.dc_affinity({"embeddings": jnp.asarray(embeddings)},
                                  {"sources": jnp.asarray(sources)}, jax.random.key(0),
                                  n_fft=n_fft, hop=hop, threshold_db=40.0)
  for b in range(2):
    spec = _scipy_stft(sources[b].astype(np.float64), n_fft, hop)         # [S, L, F]
    y = np.eye(2)[np.argmax(np.abs(spec), axis=0).reshape(-1)]            # [L*F, S]
    level = 20 * np.log10(np.abs(spec.sum(0)).reshape(-1) + 1e-8)
    w = (level > level.max() - 40.0).astype(float)
    v = embeddings[b].astype(np.float64)
    diff = (v @ v.T - y @ y.T) * np.sqrt(w)[:, None] * np.sqrt(w)[None, :]
    expected = np.sum(diff ** 2) / w.sum() ** 2
    assert 0.0 < w.mean() < 1.0
    np.testing.assert_allclose(float(value[b]), expected, rtol=2e-4)
    np.testing.assert_allclose(float(metrics["active_bins"][b]), w.mean(), rtol=1e-6)


def test_oracle_embeddings_give_the_ibm_masked_mixture():
  rng = np.random.default_rng(2)
  n_fft, hop, length = 64, 16, 1200
  sources = _sources(rng, length)
  mixture = sources.sum(0)
  spec = _scipy_stft(sources.astype(np.float64), n_fft, hop)
  ibm = np.eye(2)[np.argmax(np.abs(spec), axis=0)]                        # [L, F, S]
  embeddings = jnp.asarray(ibm.reshape(1, -1, 2), jnp.float32)            # one-hot, D = 2
  mixture_spec = dc.stft(jnp.asarray(mixture[None]), n_fft, hop)
  estimates = np.asarray(dc.masked_estimates(embeddings, mixture_spec, num_sources=2,
                                             n_fft=n_fft, hop=hop, length=length))[0]
  assert estimates.shape == (2, length)
  expected = _scipy_masked(mixture.astype(np.float64), np.moveaxis(ibm, -1, 0), n_fft, hop)
  # k-means labels clusters in its own order: compare under the better permutation.
  errors = [np.max(np.abs(estimates[list(p)] - expected)) for p in ((0, 1), (1, 0))]
  assert min(errors) < 1e-4 * np.abs(mixture).max()
  assert max(errors) > 0.1 * np.abs(mixture).max()


def _config(arg="smoke", **overrides):
  return with_overrides(dc_config.get_config(arg), **overrides)


@pytest.mark.parametrize("overrides, message", [
    (dict(model__hop=48), "config.model.hop=48 must divide"),
    (dict(model__embedding_net="gru"), "config.model.embedding_net='gru' is not one of"),
    (dict(model__reference_channel=1), "config.model.reference_channel=1"),
    # A term written out by hand (not linked to the model's fields) that disagrees.
    (dict(loss__terms=ml_collections.ConfigDict(
        {"dc": {"term": "dc_affinity", "n_fft": 128, "hop": 16}})),
     "config.loss.terms.dc has n_fft, hop = (128, 16)"),
])
def test_config_errors_are_one_line(overrides, message):
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.check_config(_config(**overrides))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_configs_link_the_term_to_the_model_stft():
  for arg in ("smoke", "", "gpu", "bi"):
    config = dc_config.get_config(arg)
    config_checks.check_config(config)
    config.model.hop = config.model.n_fft // 2
    (term,) = loss_terms.bind(config)
    assert (term.settings["n_fft"], term.settings["hop"]) == (config.model.n_fft,
                                                               config.model.n_fft // 2)
  bi = dc_config.get_config("bi,smoke")
  assert bi.model.input_spectra == "all" and len(bi.data.input_channels) == 2
  module = models.build(bi)
  mixture = jnp.zeros((1, 800, 2))
  params = models.Model(module, 2).init(jax.random.key(0), mixture)["params"]
  bins = bi.model.n_fft // 2 + 1
  # Two concatenated spectra in, one direction per cell, one set of F*D embeddings out.
  assert params["lstm_0_fwd"]["ii"]["kernel"].shape == (2 * bins, bi.model.hidden)
  assert params["lstm_0_bwd"]["ii"]["kernel"].shape == (2 * bins, bi.model.hidden)
  assert params["embedding"]["kernel"].shape == (2 * bi.model.hidden,
                                                 bins * bi.model.embedding_dim)


def test_trains_and_evaluates_through_the_generic_trainer(smoke_dataset, tmp_path):
  shards, cache = smoke_dataset
  config = smoke_config(dc_config, shards, cache, train__num_steps=4, train__eval_every=2,
                        train__checkpoint_every=2, eval__metrics=("sisdr",), eval__vocoder=False)
  workdir = str(tmp_path / "dc")
  result = train.train_and_evaluate(config, workdir, progress=False)
  assert result["step"] == 4
  assert np.isfinite(result["best"]["val_loss"]) and np.isfinite(result["best"]["val_sisdri"])
  assert np.isfinite(result["last"]["dc/active_bins"])
  summary = evaluation.run_evaluation(config, workdir, progress=False)
  for name in ("rows.csv", "rows_oracle_ibm.csv", "rows_oracle_irm.csv"):
    with open(os.path.join(summary["out_dir"], name), newline="") as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == config.data.num_examples.test
    assert all(np.isfinite(float(r["sisdr_improvement"])) for r in rows)
  ibm = summary["oracles"]["oracle_ibm"]["sisdr_improvement"]["mean"]
  assert ibm > summary["overall"]["sisdr_improvement"]["mean"]

  # The jitted step lowers the DC loss on one fixed batch (a constant learning rate: the
  # 4-step run above decays it every step).
  config.optim.decay_every_steps = 1000
  config.optim.learning_rate = 3e-3
  programs = train.build_programs(config)
  state = programs.init(jax.random.key(config.seed))
  from data_pipeline import loader as loader_lib
  batch = next(iter(loader_lib.make_loader(config, shards, "train", train=False, batch_size=4)))
  inputs = programs.inputs(batch)
  before = float(np.mean(programs.eval_step(state.params, state.model_state, inputs)["loss"]))
  for _ in range(30):
    state, _ = programs.train_step(state, inputs)
  after = float(np.mean(programs.eval_step(state.params, state.model_state, inputs)["loss"]))
  assert np.isfinite(before) and after < 0.6 * before, (before, after)
