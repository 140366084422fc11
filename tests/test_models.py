"""SuDoRM-RF: parameter counts, shapes per input configuration, layers against
brute-force numpy (PyTorch conv semantics), depthwise impls, dtypes, jit."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax.configs import base
from spatialsep_jax import models
from spatialsep_jax.models import layers, sudormrf

AUTHORS_2CH_IPD_PARAMS = 3_816_328
UNUSED_AUTHOR_NORM_PARAMS = 2 * 512  # their `ln_mask_in`, declared but never applied
ONE = ("L_tmic",)
TWO = ("L_back", "L_tmic")


def make_config(channels=TWO, features=(), fusion="concat", extra_outputs=0, tiny=True,
                dtype="float32", depthwise_impl="slices"):
  config = base.get_base_config("smoke" if tiny else "gpu")
  config.data.input_channels = channels
  config.model.features = features
  config.model.fusion = fusion
  config.model.extra_outputs = extra_outputs
  config.model.dtype = dtype
  config.model.depthwise_impl = depthwise_impl
  return config


def random_params(model, num_samples, seed=0):
  """Parameters of `model` with random values, without compiling `model.init`
  (its XLA compile dominates CPU test time): shapes from `jax.eval_shape`."""
  mixture = jax.ShapeDtypeStruct((2, num_samples, model.num_input_channels), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), mixture)["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "scale":
      return jnp.ones(leaf.shape)
    if name == "slope":
      return jnp.full(leaf.shape, 0.25)
    fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" and leaf.ndim > 1 else 4
    return jnp.asarray(rng.uniform(-1, 1, leaf.shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def two_channel_ipd():
  """A tiny two-channel + IPD model with a noise output, its params, a mixture and its output."""
  config = make_config(TWO, ("ipd",), extra_outputs=1)
  config.model.num_blocks = 1
  model = models.build(config)
  mixture = jax.random.normal(jax.random.key(3), (2, 240, 2))
  params = random_params(model, 240)
  estimates = jax.jit(model.apply)({"params": params}, mixture)
  return config, model, params, mixture, estimates


def test_param_counts_full_size():
  configurations = {
      "mono": make_config(ONE, tiny=False),
      "2ch (unilateral/bilateral)": make_config(TWO, tiny=False),
      "2ch+ipd": make_config(TWO, ("ipd",), tiny=False),
      "2ch+ipd+ild": make_config(TWO, ("ipd", "ild"), tiny=False),
      "2ch+ipd attention": make_config(TWO, ("ipd",), "attention", tiny=False),
      "2ch+ipd +noise output": make_config(TWO, ("ipd",), extra_outputs=1, tiny=False),
  }
  counts = {name: models.count_params(models.abstract_params(models.build(config)))
            for name, config in configurations.items()}
  for name, count in counts.items():
    print(f"{name:28s} {count:>10,d}")
  assert counts["2ch+ipd"] == AUTHORS_2CH_IPD_PARAMS - UNUSED_AUTHOR_NORM_PARAMS
  assert abs(counts["2ch+ipd"] - AUTHORS_2CH_IPD_PARAMS) / AUTHORS_2CH_IPD_PARAMS < 0.01
  assert counts["mono"] == counts["2ch (unilateral/bilateral)"]
  assert counts["2ch+ipd attention"] < counts["2ch+ipd"]


@pytest.mark.parametrize("channels,features,fusion,extra_outputs", [
    (ONE, (), "concat", 0),
    (TWO, (), "concat", 0),
    (TWO, ("ipd",), "concat", 0),
    (TWO, ("ild", "ipd"), "concat", 1),
    (("L_front", "L_back", "L_tmic", "R_tmic"), ("ipd_cossin",), "attention", 0),
])
def test_output_shape_every_configuration(channels, features, fusion, extra_outputs):
  model = models.build(make_config(channels, features, fusion, extra_outputs))
  mixture = jax.ShapeDtypeStruct((2, 403, len(channels)), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), mixture)
  estimates = jax.eval_shape(model.apply, variables, mixture)
  assert estimates.shape == (2, 2 + extra_outputs, 403) and estimates.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


def test_init_and_apply_run(two_channel_ipd):
  config, model, _, mixture, estimates = two_channel_ipd
  params = jax.jit(model.init)(jax.random.key(1), mixture)["params"]
  assert models.count_params(params) == models.count_params(models.abstract_params(model))
  assert estimates.shape == (2, 3, 240) and np.isfinite(np.asarray(estimates)).all()


def test_features_on_one_channel_is_a_value_error():
  with pytest.raises(ValueError, match="model.features"):
    models.build(make_config(ONE, ("ipd",)))


def numpy_grouped_conv1d(x, weight, bias, stride, padding):
  """PyTorch Conv1d(groups=C_in) on x [T, C_in] with weight [out, 1, K] -> [L, out]."""
  num_in, (num_out, _, kernel) = x.shape[1], weight.shape
  padded = np.pad(x, ((padding, padding), (0, 0)))
  frames = (padded.shape[0] - kernel) // stride + 1
  out = np.zeros((frames, num_out))
  for o in range(num_out):
    group = o // (num_out // num_in)
    for l in range(frames):
      out[l, o] = bias[o] + np.dot(padded[l * stride:l * stride + kernel, group], weight[o, 0])
  return out


def numpy_transposed_conv1d(x, weight, bias, stride, padding, output_padding):
  """PyTorch ConvTranspose1d(groups=S) on x [L, S, E] with weight [S, E, K] -> [S, T]."""
  frames, sources, _ = x.shape
  kernel = weight.shape[-1]
  length = (frames - 1) * stride - 2 * padding + kernel + output_padding
  out = np.tile(bias[:, None], (1, length)).astype(np.float64)
  for s in range(sources):
    for l in range(frames):
      for k in range(kernel):
        n = l * stride + k - padding
        if 0 <= n < length:
          out[s, n] += np.dot(x[l, s], weight[s, :, k])
  return out


def test_softmax_masks_sum_to_one_closed_form(two_channel_ipd):
  """With one decoder filter bank shared by all outputs, the masks summing to one
  over outputs give sum_s estimate_s = decoder(encoder(mixture)) + sum_s bias_s,
  computed here with brute-force PyTorch-semantics numpy convolutions."""
  _, model, params, mixture, _ = two_channel_ipd
  num_samples = mixture.shape[1]
  shared = np.asarray(params["decoder"]["kernel"][:1], np.float64)
  params = dict(params, decoder=dict(params["decoder"], kernel=jnp.repeat(
      params["decoder"]["kernel"][:1], 3, axis=0)))
  estimates = np.asarray(jax.jit(model.apply)({"params": params}, mixture))
  weight = np.transpose(np.asarray(params["encoder"]["kernel"]), (2, 1, 0))  # [E, 1, K]
  for b in range(mixture.shape[0]):
    encoded = np.maximum(numpy_grouped_conv1d(np.asarray(mixture[b], np.float64), weight,
                                              np.asarray(params["encoder"]["bias"]), 10, 10), 0)
    decoded = numpy_transposed_conv1d(encoded[:, None, :], shared, np.zeros(1), 10, 10, 9)
    want = decoded[0, :num_samples] + float(np.sum(params["decoder"]["bias"]))
    np.testing.assert_allclose(estimates[b].sum(0), want, atol=1e-4, rtol=1e-4)


def test_mask_conv_matches_pytorch_conv2d_semantics():
  basis, outputs = 8, 3
  x = np.random.default_rng(0).standard_normal((1, 4, basis)).astype(np.float32)
  module = sudormrf.MaskConv(outputs)
  params = module.init(jax.random.key(0), x)["params"]
  got = np.asarray(module.apply({"params": params}, x))
  weight, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
  padded = np.pad(x[0], ((0, 0), (basis // 2, basis // 2)))  # Conv2d padding (E - E//2, 0)
  for l in range(4):
    for s in range(outputs):
      want = [bias[s] + np.dot(weight[s], padded[l, b:b + basis + 1]) for b in range(basis)]
      np.testing.assert_allclose(got[0, l, s], want, atol=1e-5)


def test_decoder_matches_transposed_conv():
  x = np.random.default_rng(1).standard_normal((1, 7, 2, 6)).astype(np.float32)
  module = sudormrf.GroupedDecoder(21, 10, 10)
  params = module.init(jax.random.key(0), x)["params"]
  got = np.asarray(module.apply({"params": params}, x))
  want = numpy_transposed_conv1d(x[0], np.asarray(params["kernel"]), np.asarray(params["bias"]),
                                 10, 10, 9)
  assert got.shape == (1, 2, 70)
  np.testing.assert_allclose(got[0], want, atol=1e-5)


def test_global_layer_norm_matches_numpy():
  x = np.random.default_rng(2).standard_normal((2, 9, 5)).astype(np.float32) * 3 + 1
  module = layers.GlobalLayerNorm()
  params = {"scale": jnp.arange(1.0, 6.0), "bias": jnp.full((5,), 0.5)}
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
  want = (x - mean) / np.sqrt(var + 1e-8) * np.arange(1.0, 6.0) + 0.5
  np.testing.assert_allclose(module.apply({"params": params}, x), want, atol=1e-5)


@pytest.mark.parametrize("length,stride", [(16, 1), (16, 2), (13, 2), (7, 1), (14, 3), (9, 3)])
def test_depthwise_impls_agree_with_numpy_and_each_other(length, stride):
  rng = np.random.default_rng(length + stride)
  x = rng.standard_normal((2, length, 3)).astype(np.float32)
  kernel = rng.standard_normal((5, 3)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (2, 2), (0, 0)))
  out_length = (length + 4 - 5) // stride + 1
  want = np.stack([(padded[:, l * stride:l * stride + 5] * kernel).sum(1)
                   for l in range(out_length)], axis=1)
  outputs, grads = {}, {}
  for impl in layers.DEPTHWISE_IMPLS:
    outputs[impl] = layers.depthwise_conv1d(jnp.asarray(x), jnp.asarray(kernel), stride, impl)
    loss = lambda x_, k_: jnp.sum(jnp.sin(layers.depthwise_conv1d(x_, k_, stride, impl)))
    grads[impl] = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(kernel))
    np.testing.assert_allclose(outputs[impl], want, atol=1e-5)
  for impl in ("xla", "pallas"):
    for got, other in zip(grads["slices"], grads[impl]):
      np.testing.assert_allclose(got, other, atol=1e-5)


def test_depthwise_impls_give_the_same_model(two_channel_ipd):
  config, _, params, mixture, slices = two_channel_ipd
  config = config.copy_and_resolve_references()
  config.model.depthwise_impl = "xla"
  model_xla = models.build(config)
  np.testing.assert_allclose(jax.jit(model_xla.apply)({"params": params}, mixture), slices,
                             atol=1e-4)


def test_bfloat16_runs_and_returns_float32(two_channel_ipd):
  config, _, params, mixture, full = two_channel_ipd
  config = config.copy_and_resolve_references()
  config.model.dtype = "bfloat16"
  half = jax.jit(models.build(config).apply)({"params": params}, mixture)
  assert half.dtype == jnp.float32 and np.isfinite(np.asarray(half)).all()
  assert np.linalg.norm(half - full) / np.linalg.norm(full) < 0.1


def test_jit_gradients_are_finite(two_channel_ipd):
  _, model, params, mixture, _ = two_channel_ipd
  loss = lambda p: jnp.mean(model.apply({"params": p}, mixture) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  assert float(jnp.abs(grads["encoder"]["kernel"]).sum()) > 0
  deepest = f"depthwise_{model.upsampling_depth - 1}"
  assert float(jnp.abs(grads["block_0"][deepest]["kernel"]).sum()) > 0


def test_flops_per_second_of_audio_is_positive():
  config = make_config(ONE)
  config.model.num_blocks = 1
  assert models.flops_per_second_of_audio(config) > 1e6


def test_separate_feature_norm_adds_one_norm_over_the_feature_map():
  joint = make_config(TWO, ("ipd", "ild"), tiny=False)
  separate = make_config(TWO, ("ipd", "ild"), tiny=False)
  separate.model.feature_norm = "separate"
  counts = [models.count_params(models.abstract_params(models.build(c))) for c in (joint, separate)]
  assert counts[1] - counts[0] == 2 * 2 * 257  # gain and bias per feature channel
  tiny = make_config(TWO, ("ipd", "ild"))
  tiny.model.feature_norm = "separate"
  model = models.build(tiny)
  mixture = jnp.asarray(np.random.default_rng(0).normal(size=(2, 800, 2)), jnp.float32)
  params = random_params(model, 800)
  out = model.apply({"params": params}, mixture)
  assert out.shape == (2, 2, 800) and bool(jnp.all(jnp.isfinite(out)))
  assert "feature_norm" in params


@pytest.mark.parametrize("impl", ["fused"])
def test_fused_global_layer_norm_matches_autodiff_values_and_gradients(impl):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(2.0, 3.0, (3, 40, 6)).astype(np.float32))
  scale, bias = (jnp.asarray(rng.normal(size=6).astype(np.float32)) for _ in range(2))
  weights = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  params = {"scale": scale, "bias": bias}

  def loss(impl, x_, p):
    return jnp.sum(layers.GlobalLayerNorm(impl=impl).apply({"params": p}, x_) * weights)

  for argnum in (0, 1):
    want = jax.grad(loss, argnums=argnum + 1)("autodiff", x, params)
    got = jax.grad(loss, argnums=argnum + 1)(impl, x, params)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(layers.GlobalLayerNorm(impl=impl).apply({"params": params}, x),
                             layers.GlobalLayerNorm().apply({"params": params}, x), atol=1e-5)


def _unrolled_to_scanned(params, num_blocks):
  """Stacks `block_<i>` parameter trees into the scanned layout `blocks/block`."""
  blocks = [params[f"block_{i}"] for i in range(num_blocks)]
  scanned = {k: v for k, v in params.items() if not k.startswith("block_")}
  scanned["blocks"] = {"block": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *blocks)}
  return scanned


def _speed_loss(module, params, mixture):
  return jnp.mean(jnp.sin(module.apply({"params": params}, mixture)))


@functools.lru_cache(maxsize=1)
def _speed_reference():
  """The default path's (config, mixture, params, (loss, gradients)), compiled once for all
  speed variants."""
  config = make_config(TWO, ("ipd",))
  config.model.num_blocks = 2
  model = models.build(config)
  mixture = jax.random.normal(jax.random.key(4), (2, 240, 2))
  params = random_params(model, 240)
  reference = jax.jit(jax.value_and_grad(lambda p: _speed_loss(model, p, mixture)))(params)
  return config, mixture, params, reference


@pytest.mark.parametrize("overrides", [dict(norm_impl="fused"), dict(remat="block"),
                                       dict(scan_blocks=True, remat="dots"),
                                       dict(norm_impl="fused", scan_blocks=True, remat="dots"),
                                       dict(remat="block", remat_blocks=1),
                                       dict(depthwise_impl="pallas"),
                                       dict(uconv_impl="pallas", norm_impl="fused",
                                            remat="block", remat_blocks=1)])
def test_speed_variants_compute_the_same_function(overrides):
  """Fused norms, rematerialisation and scanned blocks change speed and memory only."""
  config, mixture, params, (want_value, want_grads) = _speed_reference()
  variant = config.copy_and_resolve_references()
  variant.model.update(overrides)
  other = models.build(variant)
  other_params = (_unrolled_to_scanned(params, 2) if overrides.get("scan_blocks") else params)
  assert jax.tree_util.tree_structure(other_params) == jax.tree_util.tree_structure(
      jax.eval_shape(other.init, jax.random.key(0), mixture)["params"])
  got_value, got_grads = jax.jit(jax.value_and_grad(
      lambda p: _speed_loss(other, p, mixture)))(other_params)
  np.testing.assert_allclose(got_value, want_value, rtol=1e-4)
  if overrides.get("scan_blocks"):
    got_grads = {**{k: v for k, v in got_grads.items() if k != "blocks"},
                 **{f"block_{i}": jax.tree_util.tree_map(lambda a: a[i], got_grads["blocks"]["block"])
                    for i in range(2)}}
  for w, g in zip(jax.tree_util.tree_leaves(want_grads), jax.tree_util.tree_leaves(got_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)


def test_unknown_speed_options_are_one_line_errors():
  for key, value in (("norm_impl", "magic"), ("remat", "everything")):
    config = make_config()
    config.model[key] = value
    with pytest.raises(ValueError, match=f"model.{key}"):
      models.build(config)
  config = make_config()
  config.model.update(num_blocks=4, remat="block", remat_blocks=2, scan_blocks=True)
  with pytest.raises(ValueError, match="model.remat_blocks=2 of 4 needs config.model.scan_blocks=False"):
    models.build(config)


def test_remat_blocks_rematerialises_only_the_first_blocks():
  """The remat wrapper shows in the traced gradient as one `remat` per rematted block."""
  config = make_config(TWO, ("ipd",))
  config.model.update(num_blocks=3, remat="block", remat_blocks=2)
  model = models.build(config)
  mixture = jnp.zeros((1, 240, 2))
  params = random_params(model, 240)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, mixture))))(params)
  assert str(jaxpr).count("remat") == 2
  for remat_blocks, count in ((-1, 3), (0, 0)):
    config.model.remat_blocks = remat_blocks
    jaxpr = jax.make_jaxpr(jax.grad(
        lambda p: jnp.sum(models.build(config).apply({"params": p}, mixture))))(params)
    assert str(jaxpr).count("remat") == count
