"""Causal complex (and real) layers on time-frequency feature maps, streamable frame by frame.

A feature map is `[B, T, F, P, C]`: batch, frames, frequency bins, parts, channels. `P = 2`
holds a complex map as its real and imaginary parts (index 0 real, 1 imaginary); `P = 1` is
a real map (the real-valued NUNet-style variant runs the same layers with P = 1).

Complex layers carry two real weights, W = Wr + j Wi, and compute
  re = Wr * xr - Wi * xi,   im = Wr * xi + Wi * xr
as one real convolution of [xr, xi] with the block kernel [[Wr, Wi], [-Wi, Wr]] (input
channels (re, im) x output channels (re, im)). Normalisation and PReLU act on each part.

Causality. Every operation that looks along time reads only the past: time convolutions and
running means are left-padded. The left context comes from `time_context`: zeros offline, and
in streaming mode (the "stream" collection is mutable and holds a buffer per operation) the
last frames of the previous call, so processing a signal in pieces equals processing it whole.
Normalisation is per frame (`PartNorm`, mode "frame", over bins and channels) or cumulative
over past frames (mode "cumulative", running sums carried in the stream state); the authors'
code uses GroupNorm(1, C) over the whole utterance, which is not causal.
"""

import hashlib
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORM_EPS = 1e-8
NORM_MODES = ("frame", "cumulative")
STREAM = "stream"


def time_context(module: nn.Module, x: jax.Array, size: int, name: str = "context",
                 axis: int = 1) -> jax.Array:
  """`x` with `size` past frames prepended along `axis`: zeros offline; in streaming mode the
  last `size` frames seen by this operation in the previous call (a "stream" variable)."""
  if size == 0:
    return x
  streaming = module.is_mutable_collection(STREAM) and not module.is_initializing()
  if not streaming:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (size, 0)
    return jnp.pad(x, pad)
  shape = list(x.shape)
  shape[axis] = size
  buffer = module.variable(STREAM, name, jnp.zeros, tuple(shape), x.dtype)
  full = jnp.concatenate([buffer.value, x], axis=axis)
  buffer.value = jax.lax.slice_in_dim(full, full.shape[axis] - size, full.shape[axis], axis=axis)
  return full


def complex_block_kernel(real: jax.Array, imag: jax.Array) -> jax.Array:
  """[..., Cin, Cout] x 2 -> [..., 2 Cin, 2 Cout] so that [xr, xi] @ K = [re, im]."""
  top = jnp.concatenate([real, imag], axis=-1)       # from xr: (Wr -> re, Wi -> im)
  bottom = jnp.concatenate([-imag, real], axis=-1)   # from xi: (-Wi -> re, Wr -> im)
  return jnp.concatenate([top, bottom], axis=-2)


def _fmix32(x):
  """murmur3's 32-bit finaliser (an avalanche hash of uint32 values)."""
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _torch_uniform(fan_in: int, salt: int = 0):
  """PyTorch's default conv initialiser U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Hand-written from the key's bits with an integer hash (murmur3's finaliser) instead of
  jax.random.uniform: the model has ~300 weight tensors, and XLA's CPU compile of one threefry
  expansion per tensor made `jax.jit(init)` of the smoke model take ~220 s on this VM (~47 s
  with the hash). `salt` (a static 32-bit integer) is mixed into the seed: `uniform_param`
  passes a hash of the parameter's path, so tensors drawn from one key still differ."""
  bound = 1.0 / np.sqrt(max(fan_in, 1))

  def init(key, shape, dtype=jnp.float32):
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    seed = _fmix32(words[0] ^ _fmix32(words[-1] + jnp.uint32(0x9E3779B9)))
    if salt:
      seed = _fmix32(seed ^ jnp.uint32(salt))
    x = jnp.arange(int(np.prod(shape)), dtype=jnp.uint32) * jnp.uint32(0x9E3779B9) + seed
    x = _fmix32(_fmix32(x) ^ _fmix32(seed ^ jnp.uint32(0x85EBCA6B)))
    unit = (x >> 8).astype(jnp.float32) / float(1 << 24)                  # [0, 1)
    return (bound * (2.0 * unit - 1.0)).reshape(shape).astype(dtype)

  return init


def _path_salt(path) -> int:
  digest = hashlib.sha1("/".join(str(p) for p in path).encode()).digest()
  return int.from_bytes(digest[:4], "little") | 1                           # never 0


def uniform_param(module: nn.Module, name: str, fan_in: int, shape) -> jax.Array:
  """`module.param(name, U(+-1/sqrt(fan_in)), shape)` seeded by the init key of the whole model
  and a hash of the parameter's path (module path + name), not by the per-parameter key Flax
  derives: Flax's derivation is one `fold_in` (a threefry expansion) per parameter, which XLA's
  CPU backend compiles slowly (200 of them: ~20 s); unused, it is dead code and drops out of
  the compiled init. The seed still decides every value, and every tensor differs. Falls back
  to Flax's per-parameter key where the root key is not reachable (other Flax internals)."""
  root = None
  if module.is_initializing():
    try:
      root = module.scope.rngs["params"].rng
      salt = _path_salt(tuple(module.scope.path) + (name,))
    except (AttributeError, KeyError, TypeError):
      root = None
  if root is None or not isinstance(root, jax.Array):
    return module.param(name, _torch_uniform(fan_in), shape)
  init = _torch_uniform(fan_in, salt)
  return module.param(name, lambda _key, shape: init(root, shape), shape)


def _merge_parts(x: jax.Array) -> jax.Array:
  """[B, T, F, P, C] -> [B, T, F, P*C] (parts outermost: [re channels, im channels])."""
  return x.reshape(x.shape[:3] + (x.shape[3] * x.shape[4],))


def _split_parts(x: jax.Array, parts: int) -> jax.Array:
  return x.reshape(x.shape[:3] + (parts, x.shape[3] // parts))


def _conv2d(x, kernel, stride_f=1, dilation=(1, 1), pad_f=(0, 0), groups=1):
  """Time-valid 2-D cross-correlation of `x` [B, T', F, C] with `kernel` [kt, kf, C/g, O]."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, stride_f), padding=[(0, 0), pad_f],
      rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups)


class PartConv(nn.Module):
  """Causal 2-D convolution of a part map: `[B, T, F, P, Cin]` -> `[B, T, F', P, features]`.

  Kernel `(kernel_t, kernel_f)`, frequency stride `stride_f` with symmetric frequency padding
  `dilation_f * (kernel_f - 1) // 2`, time left-padded by `dilation_t * (kernel_t - 1)`. P = 2:
  complex weights (two real kernels); P = 1: one real kernel. Bias per part and channel.
  """
  features: int
  kernel_t: int = 2
  kernel_f: int = 3
  stride_f: int = 1
  dilation_t: int = 1
  dilation_f: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    parts, cin = x.shape[3], x.shape[4]
    shape = (self.kernel_t, self.kernel_f, cin, self.features)
    fan_in = cin * self.kernel_t * self.kernel_f
    real = uniform_param(self, "kernel_real", fan_in, shape)
    kernel = real if parts == 1 else complex_block_kernel(
        real, uniform_param(self, "kernel_imag", fan_in, shape))
    context = time_context(self, _merge_parts(x), self.dilation_t * (self.kernel_t - 1))
    pad_f = self.dilation_f * (self.kernel_f - 1) // 2
    y = _conv2d(context, kernel.astype(x.dtype), self.stride_f,
                (self.dilation_t, self.dilation_f), (pad_f, pad_f))
    y = _split_parts(y, parts)
    if self.use_bias:
      y = y + uniform_param(self, "bias", fan_in, (parts, self.features)).astype(x.dtype)
    return y


class PartDepthwiseSeparable(nn.Module):
  """The authors' complex depthwise-separable convolution: two depthwise kernels Dr, Di
  (kernel (kernel_t, kernel_f), dilation `dilation` on both axes), two pointwise maps Sr, Si;
  with Ar = Sr o Dr and Ai = Si o Di: re = Ar xr - Ai xi, im = Ar xi + Ai xr.
  P = 1: pointwise o depthwise. `[B, T, F, P, Cin]` -> `[B, T, F, P, features]`."""
  features: int
  dilation: int = 1
  kernel_t: int = 2
  kernel_f: int = 3

  @nn.compact
  def __call__(self, x):
    parts, cin = x.shape[3], x.shape[4]
    context = time_context(self, x, self.dilation * (self.kernel_t - 1))
    batch, frames, bins = context.shape[:3]
    # Both parts through the same depthwise kernel: parts folded into the batch.
    folded = jnp.moveaxis(context, 3, 1).reshape((batch * parts, frames, bins, cin))
    pad_f = self.dilation * (self.kernel_f - 1) // 2
    depth_fan_in, point_fan_in = self.kernel_t * self.kernel_f, cin

    def branch(suffix):
      depth_kernel = uniform_param(self, f"depthwise_{suffix}", depth_fan_in,
                                   (self.kernel_t, self.kernel_f, 1, cin))
      point_kernel = uniform_param(self, f"pointwise_{suffix}", point_fan_in,
                                   (cin, self.features))
      point_bias = uniform_param(self, f"bias_{suffix}", point_fan_in, (self.features,))
      y = _conv2d(folded, depth_kernel.astype(x.dtype), 1, (self.dilation, self.dilation),
                  (pad_f, pad_f), groups=cin)
      y = y @ point_kernel.astype(x.dtype) + point_bias.astype(x.dtype)
      return jnp.moveaxis(y.reshape((batch, parts) + y.shape[1:]), 1, 3)  # [B, T, F, P, O]

    a_real = branch("real")
    if parts == 1:
      return a_real
    a_imag = branch("imag")
    re = a_real[..., 0, :] - a_imag[..., 1, :]
    im = a_real[..., 1, :] + a_imag[..., 0, :]
    return jnp.stack([re, im], axis=3)


class PartNorm(nn.Module):
  """Causal normalisation of each part over (bins, channels), with a gain and bias per part
  and channel. "frame": statistics of the frame itself; "cumulative": of all frames so far
  (running sums carried across streaming calls). `[B, T, F, P, C]` -> same."""
  mode: str = "frame"

  @nn.compact
  def __call__(self, x):
    parts, channels = x.shape[3], x.shape[4]
    stats = x.astype(jnp.float32)
    if self.mode == "frame":
      mean = jnp.mean(stats, axis=(2, 4), keepdims=True)
      var = jnp.mean(jnp.square(stats - mean), axis=(2, 4), keepdims=True)
    elif self.mode == "cumulative":
      count = x.shape[2] * channels
      frame_sum = jnp.sum(stats, axis=(2, 4))                          # [B, T, P]
      frame_sq = jnp.sum(jnp.square(stats), axis=(2, 4))
      sums = jnp.stack([frame_sum, frame_sq], axis=-1)                 # [B, T, P, 2]
      carried_sums, carried_frames = self._carried(sums)
      totals = jnp.cumsum(sums, axis=1) + carried_sums
      frames = jnp.arange(1, x.shape[1] + 1, dtype=jnp.float32) + carried_frames
      n = (frames * count)[None, :, None]
      mean = totals[..., 0] / n
      var = jnp.maximum(totals[..., 1] / n - jnp.square(mean), 0.0)
      mean, var = mean[:, :, None, :, None], var[:, :, None, :, None]
    else:
      raise ValueError(f"PartNorm mode {self.mode!r} is not one of {NORM_MODES}")
    normalised = (stats - mean) * jax.lax.rsqrt(var + NORM_EPS)
    gain = self.param("scale", nn.initializers.ones, (parts, channels))
    bias = self.param("bias", nn.initializers.zeros, (parts, channels))
    return (normalised * gain + bias).astype(x.dtype)

  def _carried(self, sums):
    """(running [sum, sum of squares] [B, 1, P, 2], frames) before this call; zeros offline."""
    if not (self.is_mutable_collection(STREAM) and not self.is_initializing()):
      return jnp.zeros_like(sums[:, :1]), 0.0
    totals = self.variable(STREAM, "totals", jnp.zeros, sums[:, :1].shape, jnp.float32)
    frames = self.variable(STREAM, "frames", lambda: jnp.zeros((), jnp.float32))
    before = totals.value, frames.value
    totals.value = before[0] + jnp.sum(sums, axis=1, keepdims=True)
    frames.value = before[1] + sums.shape[1]
    return before


class PartPReLU(nn.Module):
  """PReLU with one slope per part (or per part and channel when `per_channel`)."""
  per_channel: bool = False

  @nn.compact
  def __call__(self, x):
    shape = (x.shape[3], x.shape[4] if self.per_channel else 1)
    slope = self.param("slope", nn.initializers.constant(0.25), shape).astype(x.dtype)
    return jnp.where(x >= 0, x, slope * x)


class ConvNormAct(nn.Module):
  """PartConv -> PartNorm -> PartPReLU (the authors' CCONV / CINCONV)."""
  features: int
  kernel_t: int = 2
  kernel_f: int = 3
  stride_f: int = 1
  norm: str = "frame"

  @nn.compact
  def __call__(self, x):
    x = PartConv(self.features, self.kernel_t, self.kernel_f, self.stride_f)(x)
    return PartPReLU()(PartNorm(self.norm)(x))


class SubPixelUp(nn.Module):
  """Frequency-only sub-pixel upsampling x`scale`: a causal (2 x 3) conv to `features * scale`
  channels, channel groups moved onto the frequency axis (out bin f*scale + n takes channel
  c*scale + n), then norm and PReLU. `[B, T, F, P, Cin]` -> `[B, T, F*scale, P, features]`."""
  features: int
  scale: int = 2
  norm: str = "frame"

  @nn.compact
  def __call__(self, x):
    y = PartConv(self.features * self.scale, kernel_t=2, kernel_f=3)(x)
    b, t, f, p, _ = y.shape
    y = y.reshape(b, t, f, p, self.features, self.scale)
    y = jnp.moveaxis(y, 5, 3).reshape(b, t, f * self.scale, p, self.features)
    return PartPReLU()(PartNorm(self.norm)(y))


class DilatedDense(nn.Module):
  """Dilated dense block: causal (2 x 3) conv to half the channels + PReLU, `num_layers`
  depthwise-separable layers with dilation 2^i on time and frequency, each fed the
  concatenation of all earlier outputs (+ norm + PReLU), and a causal (2 x 3) conv of the last
  layer's output back to `features` channels + PReLU (per-channel slopes unless `inner`)."""
  features: int
  num_layers: int = 6
  inner: bool = True
  norm: str = "frame"

  @nn.compact
  def __call__(self, x):
    half = max(1, x.shape[4] // 2)
    h = PartPReLU()(PartConv(half)(x))
    collected = h
    out = h
    for i in range(self.num_layers):
      out = PartDepthwiseSeparable(half, dilation=2**i)(collected)
      out = PartPReLU()(PartNorm(self.norm)(out))
      collected = jnp.concatenate([out, collected], axis=-1)
    return PartPReLU(per_channel=not self.inner)(PartConv(self.features)(out))


class _TimeFrequencyGate(nn.Module):
  """The gate of causal time-frequency attention on a real map `[B, T, F, C]` -> `[B, T, F, 1]`:
  time attention from the bin-mean (two causal 1-D convs of `kernel` taps along time, ReLU
  between, sigmoid) times frequency attention from a causal `window`-frame running mean (two
  causal (kernel x 1) convs along time per bin, ReLU, sigmoid). The authors' time attention
  uses a symmetric 17-tap kernel (8 frames ahead); here both look only back."""
  kernel: int = 17
  window: int = 32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]

    def causal_time_conv(name, values, cin):   # values [B', T, F', cin] -> [B', T, F', 1]
      w = uniform_param(self, f"{name}_kernel", cin * self.kernel, (self.kernel, 1, cin, 1))
      b = uniform_param(self, f"{name}_bias", cin * self.kernel, (1,))
      context = time_context(self, values, self.kernel - 1, name=name)
      return _conv2d(context, w.astype(values.dtype)) + b.astype(values.dtype)

    time_summary = jnp.mean(x, axis=2, keepdims=True)                       # [B, T, 1, C]
    time_gate = causal_time_conv("time1", time_summary, channels)
    time_gate = jax.nn.sigmoid(causal_time_conv("time2", jax.nn.relu(time_gate), 1))
    # Running mean over the last `window` frames, zeros before the start (as the authors'
    # AvgPool1d over a zero-padded past, which always divides by `window`).
    context = time_context(self, x, self.window - 1, name="window")
    summed = jnp.cumsum(context, axis=1)
    summed = jnp.concatenate([jnp.zeros_like(summed[:, :1]), summed], axis=1)
    running = (summed[:, self.window:] - summed[:, :-self.window]) / self.window
    freq_gate = causal_time_conv("freq1", running, channels)
    freq_gate = jax.nn.sigmoid(causal_time_conv("freq2", jax.nn.relu(freq_gate), 1))
    return time_gate * freq_gate


class TimeFrequencyAttention(nn.Module):
  """Causal (complex) time-frequency attention: `[B, T, F, P, C]` -> same.
  P = 1: x * G(x). P = 2 (the authors' complex form with two gates Gr, Gi, g(x) = x G(x)):
  re = gr(xr) - gi(xi), im = gr(xi) + gi(xr)."""
  kernel: int = 17
  window: int = 32

  @nn.compact
  def __call__(self, x):
    b, t, f, parts, c = x.shape
    folded = jnp.moveaxis(x, 3, 0).reshape((parts * b, t, f, c))   # parts folded into batch

    def gated(name):
      gate = _TimeFrequencyGate(self.kernel, self.window, name=name)(folded)
      return jnp.moveaxis((folded * gate).reshape(parts, b, t, f, c), 0, 3)

    g_real = gated("gate_real")
    if parts == 1:
      return g_real
    g_imag = gated("gate_imag")
    re = g_real[..., 0, :] - g_imag[..., 1, :]
    im = g_real[..., 1, :] + g_imag[..., 0, :]
    return jnp.stack([re, im], axis=3)


__all__ = ["ConvNormAct", "DilatedDense", "NORM_MODES", "PartConv", "PartDepthwiseSeparable",
           "PartNorm", "PartPReLU", "STREAM", "SubPixelUp", "TimeFrequencyAttention",
           "complex_block_kernel", "time_context", "uniform_param"]
