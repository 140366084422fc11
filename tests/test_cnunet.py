"""CNUNet-TB (seed 003): complex layers against complex numpy, causality of the whole model,
the authors' parameter counts, the spectral loss against numpy, and a smoke run through the
generic trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax.models import cnunet
from spatialsep_jax.models import complex_layers as cl

TINY = dict(n_fft=64, hop=32, depths=(2, 1), out_channels=4, mid_channels=2, dense_layers=2,
            attention_kernel=5, attention_window=8)
# One stage, one dense layer: where the number of stages is not what a test is about.
TINY1 = dict(TINY, depths=(1,), dense_layers=1)


def _complex_conv_reference(x, w, bias, stride_f, dilation_t, dilation_f):
  """Brute force: y[t, f, o] = sum_{a, b, c} w[a, b, c, o] x[t - d_t (kt - 1 - a), s f + d_f b
  - pad, c] + bias[o], complex throughout, zeros outside (causal in time)."""
  frames, bins, cin = x.shape
  kt, kf, _, cout = w.shape
  pad = dilation_f * (kf - 1) // 2
  out_bins = (bins + 2 * pad - dilation_f * (kf - 1) - 1) // stride_f + 1
  y = np.zeros((frames, out_bins, cout), np.complex128)
  for t in range(frames):
    for f in range(out_bins):
      acc = np.array(bias, np.complex128)
      for a in range(kt):
        source_t = t - dilation_t * (kt - 1 - a)
        if source_t < 0:
          continue
        for b in range(kf):
          source_f = stride_f * f + dilation_f * b - pad
          if 0 <= source_f < bins:
            acc = acc + x[source_t, source_f] @ w[a, b]
      y[t, f] = acc
  return y


def _as_parts(z):
  """complex [B, T, F, C] -> [B, T, F, 2, C]."""
  return jnp.stack([jnp.real(z), jnp.imag(z)], axis=3).astype(jnp.float32)


@pytest.mark.parametrize("stride_f,dilation_t,dilation_f", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_complex_conv_equals_a_complex_valued_numpy_convolution(stride_f, dilation_t, dilation_f):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 6, 8, 3)) + 1j * rng.standard_normal((1, 6, 8, 3))
  layer = cl.PartConv(5, kernel_t=2, kernel_f=3, stride_f=stride_f, dilation_t=dilation_t,
                      dilation_f=dilation_f)
  variables = layer.init(jax.random.key(1), _as_parts(x))
  p = jax.tree.map(np.asarray, variables["params"])
  y = np.asarray(layer.apply(variables, _as_parts(x)))
  weight = p["kernel_real"] + 1j * p["kernel_imag"]
  bias = p["bias"][0] + 1j * p["bias"][1]
  want = _complex_conv_reference(x[0], weight, bias, stride_f, dilation_t, dilation_f)
  np.testing.assert_allclose(y[0, ..., 0, :] + 1j * y[0, ..., 1, :], want, atol=2e-5)


def test_complex_depthwise_separable_is_the_complex_operator_sr_dr_plus_j_si_di():
  """re + j im = (Sr o Dr + j Si o Di)(xr + j xi) with complex bias (br - bi) + j (br + bi)."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 7, 8, 3)) + 1j * rng.standard_normal((1, 7, 8, 3))
  layer = cl.PartDepthwiseSeparable(4, dilation=2)
  variables = layer.init(jax.random.key(2), _as_parts(x))
  p = jax.tree.map(np.asarray, variables["params"])
  y = np.asarray(layer.apply(variables, _as_parts(x)))

  def operator(suffix):   # depthwise as a diagonal complex conv, then pointwise, numpy
    depth = p[f"depthwise_{suffix}"][:, :, 0, :]                        # [kt, kf, C]
    diagonal = np.zeros(depth.shape[:2] + (3, 3))
    for c in range(3):
      diagonal[:, :, c, c] = depth[:, :, c]
    spread = _complex_conv_reference(x[0], diagonal, np.zeros(3), 1, 2, 2)
    return spread @ p[f"pointwise_{suffix}"]

  bias = (p["bias_real"] - p["bias_imag"]) + 1j * (p["bias_real"] + p["bias_imag"])
  want = operator("real") + 1j * operator("imag") + bias
  np.testing.assert_allclose(y[0, ..., 0, :] + 1j * y[0, ..., 1, :], want, atol=2e-5)


def test_frame_norm_and_causal_running_mean_against_numpy():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 5, 4, 2, 3)).astype(np.float32)
  norm = cl.PartNorm("frame")
  y = np.asarray(norm.apply(norm.init(jax.random.key(0), x), x))
  flat = x.transpose(0, 1, 3, 2, 4).reshape(2, 5, 2, 12)
  want = (flat - flat.mean(-1, keepdims=True)) / np.sqrt(flat.var(-1, keepdims=True) + 1e-8)
  np.testing.assert_allclose(y.transpose(0, 1, 3, 2, 4).reshape(2, 5, 2, 12), want, atol=1e-5)
  cumulative = cl.PartNorm("cumulative")
  y = np.asarray(cumulative.apply(cumulative.init(jax.random.key(0), x), x))
  for t in range(5):
    past = flat[:, :t + 1].transpose(0, 2, 1, 3).reshape(2, 2, -1)      # [B, P, (t+1) F C]
    mean, var = past.mean(-1)[:, :, None], past.var(-1)[:, :, None]
    want_t = (flat[:, t] - mean) / np.sqrt(var + 1e-8)
    got_t = y[:, t].transpose(0, 2, 1, 3).reshape(2, 2, 12)
    np.testing.assert_allclose(got_t, want_t, atol=1e-4)


def random_variables(module, mixture, seed=0):
  """Variables of `module` with every parameter drawn uniformly in +-0.5 (norm gains too):
  shapes from tracing alone, so no initialiser is compiled."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), mixture))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def tiny_model():
  module = cnunet.CNUNet(**TINY, branches="both")
  mixture = jax.random.normal(jax.random.key(1), (2, 480, 1))
  return module, random_variables(module, mixture), mixture


def test_outputs_up_to_t_ignore_input_after_t(tiny_model):
  """Changing the input from sample t0 on leaves every output sample t < hop * floor(t0 / hop)
  - delay unchanged (overlap-add completes a hop `delay` samples late); later ones change."""
  module, variables, mixture = tiny_model
  run = jax.jit(lambda v, x: module.apply(v, x)["estimates"][:, 0])
  before = np.asarray(run(variables, mixture))
  for t0 in (300, 353):
    changed = mixture.at[:, t0:].set(jax.random.normal(jax.random.key(t0), (2, 480 - t0, 1)))
    after = np.asarray(run(variables, changed))
    boundary = module.hop * (t0 // module.hop) - module.delay
    np.testing.assert_array_equal(after[:, :boundary], before[:, :boundary])
    assert np.abs(after[:, boundary:] - before[:, boundary:]).max() > 1e-3


SMALL_COUNTED = (   # every field of the closed form varies between the two
    dict(complex_layers=True, branches="both", num_input_channels=2, n_fft=64, depths=(2,),
         out_channels=6, mid_channels=4, dense_layers=2, attention_kernel=3, teacher_dim=5),
    dict(complex_layers=False, branches="mask", num_input_channels=1, n_fft=64, depths=(1, 1),
         out_channels=4, mid_channels=2, dense_layers=3, attention_kernel=5, teacher_dim=0))


@pytest.mark.parametrize("fields", SMALL_COUNTED, ids=["complex_tb_fused", "real_sb"])
def test_parameter_count_formula_equals_the_traced_model(fields):
  """`cnunet.parameter_count` (closed form) against the parameter shapes Flax creates."""
  from spatialsep_jax import models
  module = cnunet.CNUNet(**fields, hop=32, attention_window=8)   # init: placeholder teacher
  mixture = jnp.zeros((1, 256, fields["num_input_channels"]))
  params = jax.eval_shape(lambda: module.init(jax.random.key(0), mixture))["params"]
  assert models.count_params(params) == cnunet.parameter_count(**fields)
  if fields["branches"] == "both":   # the single-branch model: less the mapping branch's modules
    mapping = models.count_params({k: v for k, v in params.items() if k.startswith("map_")})
    assert models.count_params(params) - mapping == cnunet.parameter_count(
        **{**fields, "branches": "mask"})


def test_parameter_counts_match_the_authors_code_at_their_widths():
  """SPEC section 4: ~2.98 M two-branch, ~1.80 M single-branch (out_ch 64, mid_ch 32), +0.30 M
  for the stage-1 fusion of a 1024-d teacher (WavLM's width): the closed form at the
  defaults (the authors' widths), which the test above checks against the traced model."""
  both, mask_only = cnunet.parameter_count(), cnunet.parameter_count(branches="mask")
  assert (both, mask_only) == (2_973_120, 1_793_910)
  assert cnunet.parameter_count(teacher_dim=1024) - both == 295_296
  from spatialsep_jax.configs import cnunet_complex_sb, cnunet_real_sb, cnunet_tb
  assert cnunet.parameter_count(**cnunet._fields(cnunet_tb.get_config("gpu"))) == both
  assert cnunet.parameter_count(**cnunet._fields(cnunet_complex_sb.get_config("gpu"))) == mask_only
  assert cnunet.parameter_count(**cnunet._fields(cnunet_real_sb.get_config("gpu"))) == 3_507_532


def test_compressed_spectral_loss_against_numpy():
  from spatialsep_jax import spectral_terms
  rng = np.random.default_rng(3)
  estimate, target = rng.standard_normal((2, 2, 300)), rng.standard_normal((2, 2, 300))
  value, _, _ = spectral_terms.compressed_spectral_mse(
      jnp.asarray(estimate, jnp.float32), jnp.asarray(target, jnp.float32), n_fft=64, hop=32)
  window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(64) / 64)         # periodic Hamming

  def spectrum(wave):   # frame n covers samples [(n + 1) 32 - 64, (n + 1) 32)
    padded = np.concatenate([np.zeros(32), wave, np.zeros(10 * 32 - 300)])
    frames = np.stack([padded[n * 32:n * 32 + 64] for n in range(10)])
    z = np.fft.rfft(frames * window, axis=-1)
    return np.abs(z) ** 0.2 * np.exp(1j * np.angle(z))

  for b in range(2):
    e = np.stack([spectrum(w) for w in estimate[b]])
    r = np.stack([spectrum(w) for w in target[b]])
    want = (0.1 * (np.mean((e.real - r.real) ** 2) + np.mean((e.imag - r.imag) ** 2))
            + 0.9 * np.mean((np.abs(e) - np.abs(r)) ** 2))
    assert float(value[b]) == pytest.approx(want, rel=1e-4)


def test_config_errors_name_the_field():
  from spatialsep_jax import config_checks
  from spatialsep_jax.configs import cnunet_tb
  config = cnunet_tb.get_config("smoke")
  config.model.n_fft = 48
  with pytest.raises(config_checks.ConfigError, match="config.model.n_fft=48"):
    config_checks.check_config(config)
  config = cnunet_tb.get_config("smoke")
  config.model.depths = (1, 5)
  with pytest.raises(config_checks.ConfigError, match=r"depths\[1\]=5"):
    config_checks.check_config(config)


def test_smoke_config_trains_through_the_generic_trainer(smoke_dataset, tmp_path):
  """The two-branch smoke config trains and validates on the shared smoke render (target:
  talker 0's direct path at the reference mic); its loss is the compressed-spectrum term."""
  from spatialsep_jax import train
  from spatialsep_jax.configs import cnunet_tb, ild_ipd
  from tests.conftest import with_overrides
  shards, cache = smoke_dataset
  for module in (cnunet_tb,):
    config = module.get_config("smoke")
    config.data = ild_ipd.get_config("smoke").data
    config.data.input_channels = ("L_tmic",)
    with_overrides(config, data__shards_dir=shards, data__cache_dir=cache, train__num_steps=2,
                   train__eval_every=2, train__checkpoint_every=2, train__log_every=1,
                   train__batch_size=2, train__eval_batches=1)
    result = train.train_and_evaluate(config, str(tmp_path / config.name), progress=False)
    assert result["step"] == 2
    assert np.isfinite(result["last"]["loss/spectral"]) and np.isfinite(result["last"]["val_sisdr"])


def test_latent_replication_term_against_numpy():
  from spatialsep_jax import spectral_terms
  rng = np.random.default_rng(4)
  stored = rng.standard_normal((2, 5, 4, 2, 3)) * 3.0 + 1.0
  latent = rng.standard_normal((2, 5, 4, 2, 3))
  value, _ = spectral_terms.latent_replication({"latent": jnp.asarray(latent, jnp.float32)},
                                               {"cnunet_latent": jnp.asarray(stored)}, None)
  for b in range(2):
    parts = []
    for p in range(2):
      s = stored[b, :, :, p]
      parts.append((s - s.mean()) / np.sqrt(s.var() + 1e-8))
    target = np.stack(parts, axis=2)
    assert float(value[b]) == pytest.approx(np.mean((latent[b] - target) ** 2), rel=1e-5)


def test_stored_latents_join_training_batches_by_example_id(smoke_dataset, tmp_path):
  """Stage 2's loader hook: batch["cnunet_latent"][i] is row example_id[i] of the file."""
  from data_pipeline import loader as loader_lib
  from spatialsep_jax import latent_store
  from spatialsep_jax.configs import cnunet_tb_ts, ild_ipd
  shards, cache = smoke_dataset
  config = cnunet_tb_ts.get_config("smoke")
  config.data = ild_ipd.get_config("smoke").data
  config.data.shards_dir, config.data.cache_dir = shards, cache
  config.data.cnunet_latents = str(tmp_path)
  for split, count in (("train", 16), ("val", 8)):
    rows = np.arange(count, dtype=np.float16)[:, None, None, None, None] * np.ones((1, 3, 2, 2, 4))
    np.save(latent_store.latent_file(str(tmp_path), split), rows.astype(np.float16))
  batch = next(iter(loader_lib.make_loader(config, shards, "train", train=True, batch_size=4,
                                           process_index=0, process_count=1)))
  assert batch["cnunet_latent"].shape == (4, 3, 2, 2, 4)
  np.testing.assert_array_equal(batch["cnunet_latent"][:, 0, 0, 0, 0], batch["example_id"])
  np.save(latent_store.latent_file(str(tmp_path), "train"), np.zeros((5, 3, 2, 2, 4), np.float16))
  with pytest.raises(ValueError, match="holds 5 latents but the train split has 16"):
    loader_lib.make_loader(config, shards, "train", train=True, batch_size=4,
                           process_index=0, process_count=1)


def test_synthetic_batch_spec_is_the_loaders_stage_two_batch(smoke_dataset, tmp_path):
  """The benchmark's synthetic batch (train.synthetic_batch_spec) has the keys, shapes and
  dtypes of the real loader's stage-2 batch, and its latent shape passes the latent term's own
  shape check, with no latents on disk when it is made (so stage 2 can compile early)."""
  from data_pipeline import loader as loader_lib
  from spatialsep_jax import latent_store, train
  from spatialsep_jax.configs import cnunet_tb_ts, ild_ipd
  shards, cache = smoke_dataset
  config = cnunet_tb_ts.get_config("smoke")
  config.data = ild_ipd.get_config("smoke").data
  config.data.shards_dir, config.data.cache_dir = shards, cache
  programs = train.build_programs(config)
  spec = train.synthetic_batch_spec(config, programs, batch_size=4)
  assert set(spec) == set(programs.step_keys) and "cnunet_latent" in spec
  state = jax.eval_shape(programs.init, jax.random.key(0))
  jax.eval_shape(programs.train_step, state, spec)  # latent_replication checks the shapes
  config.data.cnunet_latents = str(tmp_path)
  for split, count in (("train", 16), ("val", 8)):
    np.save(latent_store.latent_file(str(tmp_path), split),
            np.zeros((count,) + spec["cnunet_latent"].shape[1:], np.float16))
  batch = next(iter(loader_lib.make_loader(config, shards, "train", train=True, batch_size=4,
                                           process_index=0, process_count=1)))
  real = {key: (batch[key].shape, np.dtype(batch[key].dtype)) for key in programs.step_keys}
  assert real == {key: (s.shape, np.dtype(s.dtype)) for key, s in spec.items()}


def _toy_teacher(wave):
  """A frozen stand-in teacher for the fusion path: frame energies, [B, L] -> [B, L / 80, 3]."""
  frames = wave[:, :wave.shape[1] // 80 * 80].reshape(wave.shape[0], -1, 80)
  energy = jnp.log(jnp.mean(frames**2, axis=-1) + 1e-6)
  return jnp.stack([energy, energy**2, jnp.ones_like(energy)], axis=-1)


def test_stage_one_fuses_the_teacher_of_the_clean_target():
  module = cnunet.CNUNet(**TINY1, branches="mask", teacher_dim=3, teacher=_toy_teacher)
  mixture = jax.random.normal(jax.random.key(1), (2, 320, 1))
  variables = random_variables(module, mixture)        # init without references: placeholder
  assert "fusion_0" in variables["params"] and "fusion_1" in variables["params"]
  run = jax.jit(lambda v, x, s: module.apply(v, x, False, {"sources": s}))
  clean = jax.random.normal(jax.random.key(2), (2, 1, 320))
  first = run(variables, mixture, clean)
  other = run(variables, mixture, 2.0 * clean[:, :, ::-1])
  assert first["latent"].shape == (2, 320 // 32 + 1, 16, 2, 4)
  assert np.abs(np.asarray(first["latent"] - other["latent"])).max() > 1e-3
  with pytest.raises(ValueError, match="stage-1 model"):
    module.apply(variables, mixture)


def test_substitute_teacher_trains_saves_and_loads(smoke_dataset, tmp_path):
  """Masked-frame pretraining on clean speech runs, and the saved teacher reproduces the
  trained encoder's embeddings."""
  from spatialsep_jax import teachers
  from spatialsep_jax.configs import cnunet_tb_stage1, ild_ipd
  shards, cache = smoke_dataset
  config = cnunet_tb_stage1.get_config("smoke")
  config.data = ild_ipd.get_config("smoke").data
  settings = teachers.SubstituteSettings(n_fft=128, hop=80, dim=8, layers=2, kernel=3)
  path = str(tmp_path / "teacher.npz")
  history = teachers.train_substitute(config, shards, path, steps=3, batch_size=4,
                                      settings=settings, log_every=1)
  assert len(history) == 3 and all(np.isfinite(loss) for _, loss in history)
  params, loaded, info = teachers.load_substitute(path)
  assert loaded == settings and "WavLM" in info["not"]
  config.model.teacher_path = path
  embed, dim = teachers.load(config)
  wave = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8000)), jnp.float32)
  assert dim == 8 and embed(wave).shape == (2, 8000 // 80 + 1, 8)


def test_initialiser_is_uniform_in_the_torch_bound_and_depends_on_the_key():
  init = cl._torch_uniform(16)
  first = np.asarray(init(jax.random.key(0), (64, 64)))
  second = np.asarray(init(jax.random.key(1), (64, 64)))
  assert np.abs(first).max() <= 0.25 and abs(first.mean()) < 0.01
  assert first.std() == pytest.approx(0.25 / np.sqrt(3), rel=0.03)   # U(-b, b): b / sqrt(3)
  assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.06    # 4 sigma at n = 4096
  # Layers draw from the model's init key salted by the parameter's path: the seed decides the
  # values, and tensors of one layer (and of two layers) differ.
  layer = cl.PartConv(64, kernel_t=1, kernel_f=1)
  x = jnp.zeros((1, 1, 1, 2, 64))
  once, again, other = (layer.init(jax.random.key(k), x)["params"] for k in (0, 0, 1))
  np.testing.assert_array_equal(once["kernel_real"], again["kernel_real"])
  assert np.abs(np.asarray(once["kernel_real"])).max() <= 0.125
  for a, b in ((once["kernel_real"], other["kernel_real"]), (once["kernel_real"], once["kernel_imag"])):
    assert abs(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]) < 0.06


def test_stage_one_evaluates_only_with_the_oracle_opt_in_and_is_marked(smoke_dataset, tmp_path):
  """A model with train_inputs (stage 1 reads the clean target) is refused by evaluation
  unless config.eval.oracle_train_inputs; with it, the clean target reaches the model (which
  raises without it) and rows and summary say "oracle teacher input"."""
  from spatialsep_jax import evaluation, models
  from spatialsep_jax.configs import cnunet_tb_stage1, ild_ipd
  shards, cache = smoke_dataset
  config = cnunet_tb_stage1.get_config("smoke")
  assert config.eval.oracle_train_inputs is True            # set by the stage-1 config
  config.data = ild_ipd.get_config("smoke").data
  config.data.input_channels = ("L_tmic",)
  config.data.shards_dir, config.data.cache_dir = shards, cache
  config.eval.update(max_examples=2, batch_size=2, metrics=("sisdr",), metric_modules=(),
                     num_workers=1, save_examples=0)
  module = cnunet.CNUNet(**TINY1, branches="mask", teacher_dim=3, teacher=_toy_teacher)
  model = models.Model(module, 1, ("sources",))
  variables = random_variables(module, jnp.zeros((1, 320, 1)))
  config.eval.oracle_train_inputs = False
  with pytest.raises(ValueError, match="oracle_train_inputs=True"):
    evaluation.evaluate_variables(config, variables, str(tmp_path / "no"), split="test",
                                  shards_dir=shards, progress=False, model=model)
  config.eval.oracle_train_inputs = True
  summary = evaluation.evaluate_variables(config, variables, str(tmp_path / "yes"), split="test",
                                          shards_dir=shards, progress=False, model=model)
  rows = evaluation.read_rows(str(tmp_path / "yes" / "rows.csv"))
  assert len(rows) == 2 and all(r["oracle_train_inputs"] == "sources" for r in rows)
  assert all(np.isfinite(r["sisdr"]) for r in rows)
  assert summary["oracle_train_inputs"] == ["sources"] and "NOT a deployable" in summary["note"]
  assert "oracle teacher input" in (tmp_path / "yes" / "summary.md").read_text()
