"""Binaural fusion models (seed 004): Conv-TasNet sides, Hadamard fusion topologies, the
interaural loss term, and the fusion configs trained through the trainer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax import interaural_terms
from spatialsep_jax import models
from spatialsep_jax.configs import fusion as fusion_configs
from spatialsep_jax.models import conv_tasnet
from spatialsep_jax.models import fusion
from spatialsep_jax.models import registry

SIDE = dict(num_basis=12, kernel=8, bottleneck=6, hidden=10, skip=6, dw_kernel=3, num_blocks=2,
            num_repeats=1)
LENGTH = 157           # not a multiple of the stride: the padding and crop are exercised


def _model(topology, encoder="learned", causal=False):
  sides = [conv_tasnet.ConvTasNet(encoder=encoder, causal=causal, **SIDE) for _ in range(2)]
  return fusion.BinauralFusion(*sides, topology=topology)


def _mixture(seed=0, batch=2, length=LENGTH):
  return jax.random.normal(jax.random.key(seed), (batch, length, 2))


def test_every_topology_maps_two_ears_to_two_ears_with_the_same_parameter_count():
  mixture = _mixture()
  for encoder in conv_tasnet.ENCODERS:
    counts = {}
    for topology in fusion.TOPOLOGIES:   # shapes only: values are checked in the tests below
      module = _model(topology, encoder)
      variables = jax.eval_shape(module.init, jax.random.key(1), mixture)
      estimates = jax.eval_shape(module.apply, variables, mixture)["estimates"]
      assert estimates.shape == (2, 2, LENGTH) and estimates.dtype == jnp.float32
      counts[topology] = models.count_params(variables["params"])
    side = conv_tasnet.ConvTasNet(encoder=encoder, **SIDE)
    one_side = models.count_params(jax.eval_shape(side.init, jax.random.key(1),
                                                  mixture[..., 0])["params"])
    assert set(counts.values()) == {2 * one_side}, (encoder, counts)
  # The registered mono enhancer: one channel in, one estimate out.
  config = fusion_configs.get_config("smoke")
  config.model.name, config.data.input_channels = "conv_tasnet", ("L_tmic",)
  mono = registry.build(config)
  variables = jax.eval_shape(mono.init, jax.random.key(0), mixture[..., :1])
  assert jax.eval_shape(mono.apply, variables, mixture[..., :1])["estimates"].shape == (
      2, 1, LENGTH)


def test_independent_topology_is_exactly_two_separate_models():
  mixture = _mixture()
  module = _model("independent")
  variables = jax.jit(module.init)(jax.random.key(2), mixture)
  estimates = np.asarray(jax.jit(module.apply)(variables, mixture)["estimates"])
  side = conv_tasnet.ConvTasNet(**SIDE)
  for index, name in enumerate(fusion.SIDES):
    alone = np.asarray(jax.jit(side.apply)({"params": variables["params"][name]},
                                           mixture[..., index]))
    np.testing.assert_allclose(estimates[:, index], alone, rtol=0, atol=1e-6)
  # A fused topology with the same parameters gives other outputs, and its latents are the
  # Hadamard products the topology names.
  for topology in ("front", "back", "double"):
    fused = _model(topology)
    stages = jax.jit(lambda v, x: fused.apply(v, x, method="latents"))(variables, mixture)
    fused_estimates = np.stack([stages[f"{name}/output"] for name in fusion.SIDES], axis=1)
    assert np.max(np.abs(fused_estimates - estimates)) > 1e-4
    product = stages["left/encoder"] * stages["right/encoder"]
    for name in fusion.SIDES:
      want = product if fusion.fuses_front(topology) else stages[f"{name}/encoder"]
      np.testing.assert_allclose(stages[f"{name}/tcn_input"], want, rtol=1e-6)
      back = stages["left/tcn_output"] * stages["right/tcn_output"]
      want = back if fusion.fuses_back(topology) else stages[f"{name}/tcn_output"]
      np.testing.assert_allclose(stages[f"{name}/masker_input"], want, rtol=1e-6)


@pytest.mark.parametrize("encoder", conv_tasnet.ENCODERS)
def test_causal_output_ignores_input_more_than_one_window_ahead(encoder):
  kernel = SIDE["kernel"]
  mixture = _mixture(3)
  change_from = 90
  later = mixture.at[:, change_from:].set(jax.random.normal(jax.random.key(4),
                                                            (2, LENGTH - change_from, 2)))
  for causal in (True, False):
    module = _model("double", encoder, causal=causal)
    variables = jax.jit(module.init)(jax.random.key(5), mixture)
    apply = jax.jit(module.apply)
    before = np.asarray(apply(variables, mixture)["estimates"])
    after = np.asarray(apply(variables, later)["estimates"])
    unaffected = change_from - kernel + 1     # output t reads input up to t + kernel - 1
    if causal:
      np.testing.assert_array_equal(before[..., :unaffected], after[..., :unaffected])
      assert np.max(np.abs(before[..., change_from:] - after[..., change_from:])) > 1e-4
    else:  # the global norm and centred convolutions look ahead: the test can see it
      assert np.max(np.abs(before[..., :unaffected] - after[..., :unaffected])) > 1e-6


def test_learned_encoder_and_stft_encoder_against_brute_force_framing():
  rng = np.random.default_rng(0)
  waveform = rng.standard_normal((1, LENGTH)).astype(np.float32)
  kernel, stride = SIDE["kernel"], SIDE["kernel"] // 2
  padded = np.concatenate([np.zeros((1, stride)), waveform,
                           np.zeros((1, (conv_tasnet.num_frames(LENGTH, kernel) + 1) * stride
                                     - LENGTH - stride))], axis=1)
  frames = np.stack([padded[0, k * stride:k * stride + kernel]
                     for k in range(conv_tasnet.num_frames(LENGTH, kernel))])
  learned = conv_tasnet.ConvTasNet(**SIDE)
  variables = jax.jit(learned.init)(jax.random.key(0), waveform)
  latent, _ = jax.jit(lambda v, x: learned.apply(v, x, method="encode"))(variables, waveform)
  basis = np.asarray(variables["params"]["encoder"]["kernel"])[:, 0, :]      # [L, N]
  np.testing.assert_allclose(latent[0], frames @ basis, rtol=1e-5, atol=1e-5)

  stft_side = conv_tasnet.ConvTasNet(encoder="stft", **SIDE)
  variables = jax.jit(stft_side.init)(jax.random.key(0), waveform)
  magnitude, spectrum = jax.jit(lambda v, x: stft_side.apply(v, x, method="encode"))(
      variables, waveform)
  window = conv_tasnet.sqrt_hann(kernel)
  np.testing.assert_allclose(magnitude[0], np.abs(np.fft.rfft(frames * window, axis=-1)),
                             rtol=1e-5, atol=1e-5)
  # An all-pass mask gives back the input exactly (sqrt-Hann analysis and synthesis).
  rebuilt = jax.jit(lambda v, m, x: stft_side.apply(v, m, x, LENGTH, method="decode"))(
      variables, magnitude, spectrum)
  np.testing.assert_allclose(rebuilt, waveform, rtol=0, atol=1e-5)


def test_interaural_term_closed_form_cases():
  rng = np.random.default_rng(1)
  target = rng.standard_normal((2, 2, 800)).astype(np.float32)
  batch = {"targets_direct": jnp.asarray(target[:, None].transpose(0, 1, 3, 2))}  # [B, S, T, M]
  def term(estimates, clip_db=100.0, **settings):  # no bin's ILD reaches the clip
    value, logged = jax.jit(lambda e: interaural_terms.interaural(
        {"estimates": e}, batch, None, clip_db=clip_db, **settings))(jnp.asarray(estimates))
    return np.asarray(value), {k: np.asarray(v) for k, v in logged.items()}
  value, logged = term(target)
  np.testing.assert_allclose(value, 0.0, atol=1e-5)
  gain_db = 6.0
  quieter_right = target * np.array([1.0, 10 ** (-gain_db / 20)], np.float32)[None, :, None]
  _, logged = term(quieter_right)                     # every bin's ILD moves by 6 dB
  np.testing.assert_allclose(logged["ild_db"], gain_db, rtol=1e-4)
  np.testing.assert_allclose(logged["ipd"], 0.0, atol=1e-5)
  swapped = target[:, ::-1]                           # other interaural phase, same energies
  value, logged = term(swapped, cues="ipd")
  assert np.all(logged["ipd"] > 0.5) and np.allclose(value, logged["ipd"])
  with pytest.raises(ValueError, match="cues"):
    term(target, cues="itd")


def test_fusion_config_validation_names_the_field():
  config = fusion_configs.get_config("smoke")
  config.data.input_channels = ("L_tmic",)
  with pytest.raises(registry.ModelConfigError, match="data.input_channels"):
    registry.build(config)
  config = fusion_configs.get_config("smoke,double")
  config.model.topology = "middle"
  with pytest.raises(registry.ModelConfigError, match="topology"):
    registry.build(config)
  config.model.topology, config.model.kernel = "front", 15
  with pytest.raises(registry.ModelConfigError, match="kernel"):
    registry.build(config)
  with pytest.raises(ValueError, match="unknown config token"):
    fusion_configs.get_config("smoke,sideways")


@pytest.fixture(scope="module")
def fusion_shards(tmp_path_factory, smoke_cache_dir):
  """A `:smoke` render of the fusion task (one talker in diffuse noise, targets at both
  T-mics); the corpus and room caches are the session's."""
  from data_pipeline import dataset
  config = fusion_configs.get_config("smoke")
  config.data.cache_dir = smoke_cache_dir
  directory = str(tmp_path_factory.mktemp("fusion_shards"))
  dataset.render(config, directory, num_workers=1, progress=False)
  return directory, smoke_cache_dir


def test_smoke_configs_train_and_evaluate_binaural_metrics(fusion_shards, tmp_path):
  from spatialsep_jax import evaluation, train
  from tests.conftest import smoke_config
  config = smoke_config(fusion_configs, *fusion_shards, arg="smoke,double",
                        eval__max_examples=1, train__num_steps=2, train__eval_every=2,
                        train__checkpoint_every=2)
  result = train.train_and_evaluate(config, str(tmp_path / "double"), progress=False)
  assert np.isfinite(result["last"]["val_sisdri"])
  summary = evaluation.run_evaluation(config, str(tmp_path / "double"), progress=False)
  rows = evaluation.read_rows(os.path.join(summary["out_dir"], "rows.csv"))
  assert len(rows) == 1
  for row in rows:
    for column in ("snr_improvement_s0", "snr_improvement_s1", "stoi_s1", "better_ear_stoi",
                   "mbstoi", "mbstoi_mixture", "ic_noise_residual", "delta_ild_db",
                   "delta_itd_ms"):
      assert np.isfinite(float(row[column])), column
    assert 0.0 <= float(row["mbstoi"]) <= 1.0
    assert float(row["better_ear_stoi"]) == pytest.approx(max(float(row["stoi_s0"]),
                                                              float(row["stoi_s1"])), abs=1e-9)
