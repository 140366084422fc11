"""Pallas U-ConvBlock kernels (interpret mode on CPU) against brute-force numpy and the XLA
path: values and every gradient, several tiles per axis with ragged last tiles.

Tolerances: float32 agrees with the XLA path to float32 rounding (rtol 1e-5 on values,
relative L2 error 1e-5 on gradients); in bfloat16 both the Pallas and the XLA path are
compared with the float32 XLA result: relative L2 error under 2e-2 for the output and each
gradient (measured: Pallas 0.2-0.4%, XLA's own bfloat16 path 0.1-1.1%); the Pallas
path must also stay within 1e-2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax.models import layers, pallas_uconv


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
  # 3 row tiles and 3 channel tiles (the last ragged) on the shapes below
  monkeypatch.setattr(pallas_uconv, "TILE_ROWS", 8)
  monkeypatch.setattr(pallas_uconv, "TILE_CHANNELS", 4)


def _relative(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


def _numpy_depthwise(x, kernel, stride):
  padding = (kernel.shape[0] - 1) // 2
  padded = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
  out_length = (x.shape[1] + 2 * padding - kernel.shape[0]) // stride + 1
  return np.stack([(padded[:, t * stride:t * stride + kernel.shape[0]] * kernel).sum(1)
                   for t in range(out_length)], axis=1)


@pytest.mark.parametrize("length,stride", [(20, 1), (17, 1), (20, 2), (19, 2)])
def test_depthwise_conv_matches_numpy_and_xla_gradients(length, stride):
  rng = np.random.default_rng(length * 10 + stride)
  x = rng.standard_normal((2, length, 10)).astype(np.float32)
  kernel = rng.standard_normal((5, 10)).astype(np.float32)
  got = pallas_uconv.depthwise_conv(jnp.asarray(x), jnp.asarray(kernel), stride)
  np.testing.assert_allclose(got, _numpy_depthwise(x, kernel, stride), rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(rng.standard_normal(got.shape), jnp.float32)
  grads = {}
  for impl in ("slices", "pallas"):
    loss = lambda x_, k_: jnp.sum(layers.depthwise_conv1d(x_, k_, stride, impl) * weights)
    grads[impl] = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(kernel))
  for got_grad, want_grad in zip(grads["pallas"], grads["slices"]):
    assert _relative(got_grad, want_grad) < 1e-5


def _xla_level(x, kernel, bias, scale, norm_bias, stride):
  conv = layers.depthwise_conv1d(x, kernel, stride, "slices") + bias.astype(x.dtype)
  return layers.fused_global_layer_norm(conv, scale, norm_bias, layers.GLN_EPS, x.dtype)


def _level_inputs(length, stride, seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((2, length, 10)), jnp.float32)
  kernel = jnp.asarray(rng.uniform(-0.45, 0.45, (5, 10)), jnp.float32)
  bias = jnp.asarray(rng.uniform(-0.45, 0.45, (10,)), jnp.float32)
  scale = jnp.asarray(1 + 0.1 * rng.standard_normal(10), jnp.float32)
  norm_bias = jnp.asarray(0.1 * rng.standard_normal(10), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((2, (length - 1) // stride + 1, 10)), jnp.float32)
  return (x, kernel, bias, scale, norm_bias), weights


def _value_and_grads(level, inputs, weights, dtype):
  x, *params = inputs
  x = x.astype(dtype)
  loss = lambda *a: jnp.sum(level(*a).astype(jnp.float32) * weights)
  return (level(x, *params),) + jax.grad(loss, argnums=tuple(range(5)))(x, *params)


@pytest.mark.parametrize("length,stride", [(24, 1), (21, 1), (24, 2), (23, 2)])
def test_depthwise_norm_is_conv_then_fused_norm_float32(length, stride):
  inputs, weights = _level_inputs(length, stride, seed=length + stride)
  want = _value_and_grads(lambda *a: _xla_level(*a, stride), inputs, weights, jnp.float32)
  got = _value_and_grads(lambda *a: pallas_uconv.depthwise_norm(*a, stride, layers.GLN_EPS),
                         inputs, weights, jnp.float32)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  for name, g, w in zip(("x", "kernel", "bias", "scale", "norm bias"), got[1:], want[1:]):
    assert _relative(g, w) < 1e-5, name


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_norm_bfloat16_is_as_close_to_float32_as_the_xla_path(stride):
  inputs, weights = _level_inputs(24, stride, seed=7 + stride)
  truth = _value_and_grads(lambda *a: _xla_level(*a, stride), inputs, weights, jnp.float32)
  xla = _value_and_grads(lambda *a: _xla_level(*a, stride), inputs, weights, jnp.bfloat16)
  got = _value_and_grads(lambda *a: pallas_uconv.depthwise_norm(*a, stride, layers.GLN_EPS),
                         inputs, weights, jnp.bfloat16)
  assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
  for name, g, x, t in zip(("output", "x", "kernel", "bias", "scale", "norm bias"),
                           got, xla, truth):
    assert _relative(g, t) < 1e-2, name
    assert _relative(x, t) < 2e-2, name


def test_depthwise_norm_level_has_the_layers_parameters():
  """The fused level creates exactly the parameters DepthwiseConv + GlobalLayerNorm create
  (same names, shapes and initial values), so checkpoints move between the two paths."""
  import flax.linen as nn

  class Fused(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.depthwise_norm_level(x, 5, 2, jnp.float32, "depthwise_1", "depthwise_norm_1")

  class Separate(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = layers.DepthwiseConv(5, stride=2, name="depthwise_1")(x)
      return layers.GlobalLayerNorm(impl="fused", name="depthwise_norm_1")(y)

  x = jax.random.normal(jax.random.key(0), (2, 16, 6))
  fused_params = Fused().init(jax.random.key(1), x)
  separate_params = Separate().init(jax.random.key(1), x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, fused_params, separate_params)
  np.testing.assert_allclose(Fused().apply(fused_params, x), Separate().apply(fused_params, x),
                             rtol=1e-5, atol=1e-5)
