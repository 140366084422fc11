"""Channels-last building blocks of the separators: `[B, L, C]` everywhere.

Parameters are float32; `dtype` is the compute dtype. Initialisers follow
PyTorch's defaults (uniform in +-1/sqrt(fan_in) for weights and biases) so that
a freshly initialised model starts where the authors' PyTorch model starts.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spatialsep_jax.models import pallas_uconv

DEPTHWISE_IMPLS = ("slices", "xla", "pallas")
NORM_IMPLS = ("autodiff", "fused")
# How a U-ConvBlock computes its depthwise levels (conv + bias + global layer norm): 'xla'
# as separate DepthwiseConv and GlobalLayerNorm layers (their own impl options), 'pallas'
# as one fused Pallas function per level (`pallas_uconv.depthwise_norm`, the 'fused' norm's
# function). Same parameters either way.
UCONV_IMPLS = ("xla", "pallas")
GLN_EPS = 1e-8


def torch_uniform_init(fan_in: int):
  """PyTorch's default Conv/Linear initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def same_padding(kernel_size: int) -> int:
  """PyTorch Conv1d padding `(k - 1) // 2` used by SuDoRM-RF."""
  return (kernel_size - 1) // 2


def depthwise_conv1d(x: jax.Array, kernel: jax.Array, stride: int = 1,
                     impl: str = "slices") -> jax.Array:
  """Depthwise 1-D convolution (cross-correlation), PyTorch `Conv1d(C, C, K,
  stride, padding=(K - 1) // 2, groups=C, bias=False)` semantics.

  Args:
    x: `[B, L, C]`.
    kernel: `[K, C]`, one filter per channel.
    stride: output hop.
    impl: 'xla' (grouped `conv_general_dilated`), 'slices' (sum of K shifted
      strided slices scaled per channel; XLA fuses it into one loop and its
      backward pass avoids XLA's slow grouped-conv gradient on GPU,
      jax-ml/jax issue 13800), or 'pallas' (Pallas kernels for the forward
      and for a backward that reads (x, grad) once; `pallas_uconv.depthwise_conv`).
  Returns:
    `[B, (L + 2 p - K) // stride + 1, C]` with `p = (K - 1) // 2`, dtype of `x`.
  """
  kernel_size, channels = kernel.shape
  if x.shape[-1] != channels:
    raise ValueError(f"depthwise kernel has {channels} channels but input has {x.shape[-1]}")
  padding = same_padding(kernel_size)
  kernel = kernel.astype(x.dtype)
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel[:, None, :], window_strides=(stride,), padding=[(padding, padding)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=channels)
  if impl == "pallas":
    return pallas_uconv.depthwise_conv(x, kernel, stride)
  if impl != "slices":
    raise ValueError(f"unknown depthwise impl {impl!r}; use one of {DEPTHWISE_IMPLS}")
  return _depthwise_slices(x, kernel, stride)


def _depthwise_slices(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  kernel_size = kernel.shape[0]
  padding = same_padding(kernel_size)
  out_length = (x.shape[1] + 2 * padding - kernel_size) // stride + 1
  padded = jnp.pad(x, ((0, 0), (padding, padding), (0, 0)))
  span = stride * (out_length - 1) + 1
  taps = [padded[:, tap:tap + span:stride, :] * kernel[tap] for tap in range(kernel_size)]
  return sum(taps[1:], taps[0])


def upsample_nearest2(x: jax.Array, length: int) -> jax.Array:
  """Nearest-neighbour x2 upsampling on the time axis, cropped to `length`:
  `[B, L, C]` -> `[B, length, C]` (`length <= 2 L`)."""
  return jnp.repeat(x, 2, axis=1)[:, :length]


def _gln_statistics(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """Per-example mean and 1/std over time and channels of `x [B, L, C]`, float32, `[B, 1, 1]`.

  One pass (sum and sum of squares in float32, which XLA reads as one multi-output
  reduction) instead of the two a centred variance needs; the cancellation error
  is ~ (mean^2 / var) * 6e-8, negligible for this network's activations. (Variants measured
  slower than this on the H100, a [B, C]-partials form and a hand-written sliced-depthwise
  backward, are in git history and benchmarks/README.md.)
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
  mean_square = jnp.mean(jnp.square(x32), axis=(1, 2), keepdims=True)
  var = jnp.maximum(mean_square - jnp.square(mean), 0.0)
  return mean, jax.lax.rsqrt(var + eps)


# Hand-written backward: autodiff of the centred two-pass form keeps float32 copies of
# the activation and re-reads it once per reduction; this VJP reads (x, g) once for the
# two per-example reductions and once for dx, all in registers, and saves only x.
def _fused_gln_forward(x, scale, bias, eps, out_dtype):
  mean, rstd = _gln_statistics(x, eps)
  return ((x.astype(jnp.float32) - mean) * rstd * scale + bias).astype(out_dtype), mean, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def fused_global_layer_norm(x, scale, bias, eps, out_dtype):
  """Global layer norm `[B, L, C]` -> same, float32 statistics, output in `out_dtype`."""
  return _fused_gln_forward(x, scale, bias, eps, out_dtype)[0]


def _fused_gln_fwd(x, scale, bias, eps, out_dtype):
  out, mean, rstd = _fused_gln_forward(x, scale, bias, eps, out_dtype)
  return out, (x, scale, mean, rstd)


def _fused_gln_bwd(eps, out_dtype, residuals, grad):
  del eps, out_dtype
  x, scale, mean, rstd = residuals
  g = grad.astype(jnp.float32)
  normed = (x.astype(jnp.float32) - mean) * rstd
  d_scale = jnp.sum(g * normed, axis=(0, 1))
  d_bias = jnp.sum(g, axis=(0, 1))
  g_scaled = g * scale
  mean_g = jnp.mean(g_scaled, axis=(1, 2), keepdims=True)
  mean_g_normed = jnp.mean(g_scaled * normed, axis=(1, 2), keepdims=True)
  d_x = rstd * (g_scaled - mean_g - normed * mean_g_normed)
  return d_x.astype(x.dtype), d_scale, d_bias


fused_global_layer_norm.defvjp(_fused_gln_fwd, _fused_gln_bwd)


class GlobalLayerNorm(nn.Module):
  """Global layer norm: statistics over time and channels per example (float32),
  per-channel gain and bias, eps 1e-8 inside the square root. `[B, L, C]` -> same.

  impl 'autodiff' is the plain centred formula differentiated by JAX; 'fused' the
  same function with one-pass statistics and a hand-written VJP (fewer HBM passes).
  """
  eps: float = GLN_EPS
  dtype: Any = jnp.float32
  impl: str = "autodiff"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale, bias = _norm_params(self, x.shape[-1])
    if self.impl == "fused":
      return fused_global_layer_norm(x, scale, bias, self.eps, jnp.dtype(self.dtype))
    if self.impl != "autodiff":
      raise ValueError(f"unknown norm impl {self.impl!r}; use one of {NORM_IMPLS}")
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (normed * scale + bias).astype(self.dtype)


def _norm_params(module: nn.Module, channels: int) -> tuple[jax.Array, jax.Array]:
  return (module.param("scale", nn.initializers.ones, (channels,), jnp.float32),
          module.param("bias", nn.initializers.zeros, (channels,), jnp.float32))


def _depthwise_params(module: nn.Module, kernel_size: int,
                      channels: int) -> tuple[jax.Array, jax.Array]:
  init = torch_uniform_init(kernel_size)
  return (module.param("kernel", init, (kernel_size, channels), jnp.float32),
          module.param("bias", init, (channels,), jnp.float32))


class PReLU(nn.Module):
  """PReLU with a single learned slope (PyTorch `nn.PReLU()`, init 0.25)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("slope", nn.initializers.constant(0.25), (), jnp.float32)
    x = x.astype(self.dtype)
    return jnp.where(x >= 0, x, slope.astype(self.dtype) * x)


class Pointwise(nn.Module):
  """1x1 convolution (a dense layer on channels): `[B, L, C_in]` -> `[B, L, features]`."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = torch_uniform_init(x.shape[-1])
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=init, bias_init=init, name="dense")(x)


class DepthwiseConv(nn.Module):
  """Depthwise Conv1d with bias: `[B, L, C]` -> `[B, L', C]` (see `depthwise_conv1d`)."""
  kernel_size: int = 5
  stride: int = 1
  impl: str = "slices"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = _depthwise_params(self, self.kernel_size, x.shape[-1])
    out = depthwise_conv1d(x.astype(self.dtype), kernel, self.stride, self.impl)
    return out + bias.astype(self.dtype)


class DepthwiseNormParams(nn.Module):
  """The parameters of a `DepthwiseConv` (`kind='conv'`: kernel [K, C], bias [C]) or of a
  `GlobalLayerNorm` (`kind='norm'`: scale, bias), created under this module's name exactly
  as those layers create them, for fused functions that take both."""
  kind: str
  kernel_size: int = 5

  @nn.compact
  def __call__(self, channels: int) -> tuple[jax.Array, jax.Array]:
    if self.kind == "conv":
      return _depthwise_params(self, self.kernel_size, channels)
    return _norm_params(self, channels)


def depthwise_norm_level(x: jax.Array, kernel_size: int, stride: int, dtype: Any,
                         conv_name: str, norm_name: str) -> jax.Array:
  """`GlobalLayerNorm(DepthwiseConv(x))` (the norm's 'fused' function) as one fused Pallas
  function, with the parameters of those two layers under `conv_name` and `norm_name`.
  Call inside a compact module."""
  channels = x.shape[-1]
  kernel, bias = DepthwiseNormParams("conv", kernel_size, name=conv_name)(channels)
  scale, norm_bias = DepthwiseNormParams("norm", name=norm_name)(channels)
  return pallas_uconv.depthwise_norm(x.astype(dtype), kernel, bias, scale, norm_bias,
                                     stride, GLN_EPS)
