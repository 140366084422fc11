"""Pallas kernels for the U-ConvBlock's depthwise levels (channels-last `[B, L, C]`).

Two functions, each a `jax.custom_vjp` whose forward and backward are Pallas kernels
(Triton lowering on a GPU, Pallas interpret mode elsewhere, so the same kernels run in the
CPU test suite):

  depthwise_conv(x, kernel, stride)
      PyTorch `Conv1d(C, C, K, stride, padding=(K-1)//2, groups=C, bias=False)`, as
      `layers.depthwise_conv1d`. Forward: one kernel. Backward: one kernel that reads
      (x, grad) once and writes dx and per-tile [K, C] kernel-gradient partials.

  depthwise_norm(x, kernel, bias, scale, norm_bias, stride, eps)
      One U-ConvBlock level, `GLN(depthwise(x) + bias)`, the function of
      `layers.DepthwiseConv` followed by `layers.GlobalLayerNorm(impl='fused')`.
      Forward: the conv kernel also writes per-tile per-channel sums and sums of squares of
      its (rounded) output, so the norm's statistics need no second read; the norm is
      applied by XLA in one elementwise pass. Backward: one kernel reads (grad, y) once for
      all the norm's sums ([B, C] partials of sum(g) and sum(g * normed)); a second reads
      (grad, y, x) once and writes dx with the norm's input gradient computed on the fly,
      and per-tile partials of the conv kernel, conv bias gradients.

Arithmetic is float32 inside the kernels whatever the storage dtype; weights are rounded to
the activation dtype first, as the XLA path does. Accumulation differs from the XLA path
(one float32 sum of the K taps instead of XLA's per-op rounding in bfloat16), so bfloat16
results agree to bfloat16 rounding, float32 ones to float32 rounding (tests/test_pallas_uconv.py).

Measured on an H200 (benchmarks/h200/README.md), one level's forward + backward at the
IPD+ILD model's largest shapes: stride 2 0.70 ms against XLA's 0.87, stride 1 at parity
(1.05 against 1.06-1.13), both at ~1 TB/s of the bytes they must move. The training step
with `model.uconv_impl='pallas'` is not measured yet, so no variant chooses it.

Tiles: `_tile_rows(stride)` output rows x `TILE_CHANNELS` channels per program; shifted taps are
loaded with row indices clamped into the array and masked (halo rows come from the
neighbours' part of the array through the caches, not from a second HBM pass).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:  # the Triton-specific load/store with masks
  from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover
  plgpu = None

# Tile shape, from the H200 at [16, 3200, 1026] bfloat16 (benchmarks/h200/results.md): the
# level's forward + backward with 16 x 128 tiles at stride 1 (1.05 ms; 32 x 128: 1.16,
# 32 x 64: 1.08) and 32 x 128 at stride 2 (0.70 ms, 8 warps no faster); 64 x 128 tiles (64
# float32 elements per thread and tensor at 4 warps) were 2-4x slower.
TILE_ROWS = None        # output rows per program for every stride; None: TILE_ROWS_BY_STRIDE
TILE_ROWS_BY_STRIDE = {1: 16}
TILE_ROWS_DEFAULT = 32  # strides not in TILE_ROWS_BY_STRIDE
TILE_CHANNELS = 128     # channels per program
NUM_WARPS = 4
# Recorded with the kernel timings (benchmark.py --what=uconv_kernels).
KERNEL_VERSION = "phase-split backward: each shifted output gradient read once for all phases"


def _interpret() -> bool:
  return jax.default_backend() != "gpu"


def _call(kernel, grid, out_shape, name):
  params = {} if _interpret() else {"compiler_params": plgpu.CompilerParams(num_warps=NUM_WARPS)}
  return pl.pallas_call(kernel, grid=grid, out_shape=out_shape, interpret=_interpret(),
                        name=name, **params)


def _tile_rows(stride: int) -> int:
  return TILE_ROWS or TILE_ROWS_BY_STRIDE.get(stride, TILE_ROWS_DEFAULT)


def _tiles(out_length, channels, tile_rows, tile_channels):
  return pl.cdiv(out_length, tile_rows), pl.cdiv(channels, tile_channels)


def _load_rows(ref, b, rows, cols, length, col_mask):
  """`ref[b, rows, cols]` as float32 with rows outside [0, length) and masked columns 0.
  Rows are clamped into the array (so the gather is in bounds also in interpret mode)."""
  row_ok = (rows >= 0) & (rows < length)
  clamped = jnp.minimum(jnp.maximum(rows, 0), length - 1)
  mask = row_ok[:, None] & col_mask[None, :]
  value = plgpu.load(ref.at[b, clamped[:, None], cols[None, :]], mask=mask, other=0)
  return value.astype(jnp.float32), mask


def _load_scalar(ref, b, index):
  """`ref[b, index]` (index a Python int) as float32."""
  return plgpu.load(ref.at[b, jnp.asarray(index, jnp.int32)]).astype(jnp.float32)


def _load_vector(ref, index, cols, col_mask):
  """`ref[index, cols]` (or `ref[cols]` for index None) as float32, masked columns 0."""
  at = ref.at[cols] if index is None else ref.at[index, cols]
  return plgpu.load(at, mask=col_mask, other=0).astype(jnp.float32)


# ------------------------------------------------------------------ forward kernel
def _forward_kernel(*refs, stride, kernel_size, length, out_length, channels, tile_rows,
                    tile_channels, with_bias, with_stats):
  x_ref, w_ref, *rest = refs
  b_ref = rest.pop(0) if with_bias else None
  y_ref = rest.pop(0)
  stats_ref = rest.pop(0) if with_stats else None
  b, t, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  padding = (kernel_size - 1) // 2
  out_rows = t * tile_rows + jnp.arange(tile_rows)
  cols = c * tile_channels + jnp.arange(tile_channels)
  col_mask = cols < channels
  acc = jnp.zeros((tile_rows, tile_channels), jnp.float32)
  for k in range(kernel_size):
    tap, _ = _load_rows(x_ref, b, stride * out_rows + (k - padding), cols, length, col_mask)
    acc = acc + tap * _load_vector(w_ref, k, cols, col_mask)[None, :]
  if with_bias:
    acc = acc + _load_vector(b_ref, None, cols, col_mask)[None, :]
  y = acc.astype(y_ref.dtype)
  out_mask = (out_rows < out_length)[:, None] & col_mask[None, :]
  plgpu.store(y_ref.at[b, out_rows[:, None], cols[None, :]], y, mask=out_mask)
  if with_stats:
    # Statistics of the stored (rounded) output, as the XLA norm sees it.
    rounded = jnp.where(out_mask, y.astype(jnp.float32), 0.0)
    plgpu.store(stats_ref.at[b, t, 0, cols], jnp.sum(rounded, axis=0), mask=col_mask)
    plgpu.store(stats_ref.at[b, t, 1, cols], jnp.sum(rounded * rounded, axis=0), mask=col_mask)


def _forward(x, kernel, bias, stride, with_stats, tile_rows=None, tile_channels=None):
  batch, length, channels = x.shape
  kernel_size = kernel.shape[0]
  if kernel_size % 2 != 1:
    raise ValueError(f"the Pallas depthwise conv needs an odd kernel size, got {kernel_size}")
  out_length = (length - 1) // stride + 1
  tile_rows = tile_rows or _tile_rows(stride)
  tile_channels = tile_channels or TILE_CHANNELS
  num_t, num_c = _tiles(out_length, channels, tile_rows, tile_channels)
  out_shape = [jax.ShapeDtypeStruct((batch, out_length, channels), x.dtype)]
  if with_stats:
    out_shape.append(jax.ShapeDtypeStruct((batch, num_t, 2, channels), jnp.float32))
  body = functools.partial(
      _forward_kernel, stride=stride, kernel_size=kernel_size, length=length,
      out_length=out_length, channels=channels, tile_rows=tile_rows,
      tile_channels=tile_channels, with_bias=bias is not None, with_stats=with_stats)
  args = (x, kernel) + ((bias,) if bias is not None else ())
  return _call(body, (batch, num_t, num_c), out_shape, "depthwise_fwd")(*args)


# ------------------------------------------------------------------ backward kernels
def _backward_kernel(*refs, stride, kernel_size, length, out_length, channels, tile_rows,
                     tile_channels, fused_norm):
  """dx rows of this tile (stride * tile_rows rows of x) and its [K, C] kernel-gradient and [C]
  bias-gradient partials (tile_rows output rows). With `fused_norm`, the conv's output
  gradient is the global layer norm's input gradient, computed here from the norm's
  output gradient g and its input y:
    dy = rstd (g scale - mean_g - (y - mean) rstd mean_gn)."""
  if fused_norm:
    g_ref, y_ref, coef_ref, scale_ref, x_ref, w_ref, dx_ref, part_ref = refs
  else:
    g_ref, x_ref, w_ref, dx_ref, part_ref = refs
  b, t, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  padding = (kernel_size - 1) // 2
  cols = c * tile_channels + jnp.arange(tile_channels)
  col_mask = cols < channels
  if fused_norm:
    mean, rstd = _load_scalar(coef_ref, b, 0), _load_scalar(coef_ref, b, 1)
    mean_g, mean_gn = _load_scalar(coef_ref, b, 2), _load_scalar(coef_ref, b, 3)
    scale = _load_vector(scale_ref, None, cols, col_mask)[None, :]

  def output_grad(rows):
    g, mask = _load_rows(g_ref, b, rows, cols, out_length, col_mask)
    if not fused_norm:
      return g
    y, _ = _load_rows(y_ref, b, rows, cols, out_length, col_mask)
    dy = rstd * (g * scale - mean_g - (y - mean) * rstd * mean_gn)
    return jnp.where(mask, dy, 0.0)

  # Input gradient, one phase r per x row j = stride m + r (m an output row of this tile):
  # dx[stride m + r] = sum_k w[k] dy[m + shift] with shift = (r + p - k) / stride where exact.
  # Each shifted dy is computed once and added to every phase that uses it (for stride 2:
  # 3 shifted reads of the output gradient instead of 5 half-masked ones of twice the rows).
  out_rows = t * tile_rows + jnp.arange(tile_rows)
  d_x = [jnp.zeros((tile_rows, tile_channels), jnp.float32) for _ in range(stride)]
  grad_at_rows = None
  for shift in range(-(padding // stride) - 1, (stride - 1 + padding) // stride + 1):
    taps = [(r, r + padding - stride * shift) for r in range(stride)]
    taps = [(r, k) for r, k in taps if 0 <= k < kernel_size]
    if not taps:
      continue
    grad = output_grad(out_rows + shift)
    if shift == 0:
      grad_at_rows = grad
    for r, k in taps:
      d_x[r] = d_x[r] + grad * _load_vector(w_ref, k, cols, col_mask)[None, :]
  for r in range(stride):
    x_rows = stride * out_rows + r
    plgpu.store(dx_ref.at[b, x_rows[:, None], cols[None, :]], d_x[r].astype(dx_ref.dtype),
                mask=(x_rows < length)[:, None] & col_mask[None, :])
  # Kernel and bias gradient partials over this tile's output rows.
  grad = output_grad(out_rows) if grad_at_rows is None else grad_at_rows
  for k in range(kernel_size):
    tap, _ = _load_rows(x_ref, b, stride * out_rows + (k - padding), cols, length, col_mask)
    plgpu.store(part_ref.at[b, t, k, cols], jnp.sum(tap * grad, axis=0), mask=col_mask)
  plgpu.store(part_ref.at[b, t, kernel_size, cols], jnp.sum(grad, axis=0), mask=col_mask)


def _backward(grad, x, kernel, stride, norm=None, tile_rows=None, tile_channels=None):
  """(dx, d_kernel float32 [K, C], d_bias float32 [C]) of the conv (+ bias); with `norm` =
  (y, coef [B, 4], scale) `grad` is the output gradient of the norm that follows."""
  batch, length, channels = x.shape
  kernel_size = kernel.shape[0]
  out_length = grad.shape[1]
  tile_rows = tile_rows or _tile_rows(stride)
  tile_channels = tile_channels or TILE_CHANNELS
  num_t, num_c = _tiles(out_length, channels, tile_rows, tile_channels)
  out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype),
               jax.ShapeDtypeStruct((batch, num_t, kernel_size + 1, channels), jnp.float32)]
  body = functools.partial(
      _backward_kernel, stride=stride, kernel_size=kernel_size, length=length,
      out_length=out_length, channels=channels, tile_rows=tile_rows,
      tile_channels=tile_channels, fused_norm=norm is not None)
  args = (grad,) + (tuple(norm) if norm is not None else ()) + (x, kernel)
  d_x, partials = _call(body, (batch, num_t, num_c), out_shape, "depthwise_bwd")(*args)
  summed = jnp.sum(partials, axis=(0, 1))
  return d_x, summed[:kernel_size], summed[kernel_size]


def _norm_sums_kernel(g_ref, y_ref, coef_ref, out_ref, *, length, channels, tile_rows,
                      tile_channels):
  """Per-tile per-channel partials of sum(g) and sum(g * normed), normed = (y - mean) rstd."""
  b, t, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rows = t * tile_rows + jnp.arange(tile_rows)
  cols = c * tile_channels + jnp.arange(tile_channels)
  col_mask = cols < channels
  g, _ = _load_rows(g_ref, b, rows, cols, length, col_mask)
  y, _ = _load_rows(y_ref, b, rows, cols, length, col_mask)
  mean, rstd = _load_scalar(coef_ref, b, 0), _load_scalar(coef_ref, b, 1)
  normed = (y - mean) * rstd  # masked entries: g = 0, so they add nothing
  plgpu.store(out_ref.at[b, t, 0, cols], jnp.sum(g, axis=0), mask=col_mask)
  plgpu.store(out_ref.at[b, t, 1, cols], jnp.sum(g * normed, axis=0), mask=col_mask)


def _norm_sums(grad, y, coef, stride, tile_rows=None, tile_channels=None):
  batch, length, channels = y.shape
  tile_rows = tile_rows or _tile_rows(stride)
  tile_channels = tile_channels or TILE_CHANNELS
  num_t, num_c = _tiles(length, channels, tile_rows, tile_channels)
  body = functools.partial(_norm_sums_kernel, length=length, channels=channels,
                           tile_rows=tile_rows, tile_channels=tile_channels)
  out_shape = jax.ShapeDtypeStruct((batch, num_t, 2, channels), jnp.float32)
  partials = _call(body, (batch, num_t, num_c), out_shape, "norm_bwd_sums")(grad, y, coef)
  return jnp.sum(partials, axis=1)  # [B, 2, C]


# ------------------------------------------------------------------ public functions
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv(x, kernel, stride):
  """Depthwise conv `[B, L, C]`, kernel `[K, C]` (K odd) -> `[B, ceil(L / stride), C]`."""
  return _forward(x, kernel, None, stride, with_stats=False)[0]


def _conv_fwd(x, kernel, stride):
  return depthwise_conv(x, kernel, stride), (x, kernel)


def _conv_bwd(stride, residuals, grad):
  x, kernel = residuals
  d_x, d_kernel, _ = _backward(grad, x, kernel, stride)
  return d_x, d_kernel.astype(kernel.dtype)


depthwise_conv.defvjp(_conv_fwd, _conv_bwd)


def _level_forward(x, kernel, bias, scale, norm_bias, stride, eps):
  kernel_c, bias_c = kernel.astype(x.dtype), bias.astype(x.dtype)
  y, stats = _forward(x, kernel_c, bias_c, stride, with_stats=True)
  count = y.shape[1] * y.shape[2]
  sums = jnp.sum(stats, axis=(1, 3))  # [B, 2]
  mean = sums[:, 0] / count
  var = jnp.maximum(sums[:, 1] / count - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + eps)
  normed = ((y.astype(jnp.float32) - mean[:, None, None]) * rstd[:, None, None] * scale
            + norm_bias).astype(x.dtype)
  return normed, (x, kernel_c, y, scale, mean, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def depthwise_norm(x, kernel, bias, scale, norm_bias, stride, eps):
  """`GLN(depthwise(x, kernel, stride) + bias)` with float32 statistics over time and
  channels per example: `[B, L, C]` -> `[B, ceil(L / stride), C]` in x's dtype."""
  return _level_forward(x, kernel, bias, scale, norm_bias, stride, eps)[0]


def _level_fwd(x, kernel, bias, scale, norm_bias, stride, eps):
  normed, residuals = _level_forward(x, kernel, bias, scale, norm_bias, stride, eps)
  return normed, residuals + (kernel, bias)


def _level_bwd(stride, eps, residuals, grad):
  del eps
  x, kernel_c, y, scale, mean, rstd, kernel, bias = residuals
  zeros = jnp.zeros_like(mean)
  sums = _norm_sums(grad, y, jnp.stack([mean, rstd, zeros, zeros], axis=1), stride)  # [B, 2, C]
  count = y.shape[1] * y.shape[2]
  mean_g = jnp.sum(sums[:, 0] * scale, axis=1) / count
  mean_gn = jnp.sum(sums[:, 1] * scale, axis=1) / count
  coef = jnp.stack([mean, rstd, mean_g, mean_gn], axis=1)
  d_x, d_kernel, d_bias = _backward(grad, x, kernel_c, stride, norm=(y, coef, scale))
  return (d_x, d_kernel.astype(kernel.dtype), d_bias.astype(bias.dtype),
          jnp.sum(sums[:, 1], axis=0), jnp.sum(sums[:, 0], axis=0))


depthwise_norm.defvjp(_level_fwd, _level_bwd)
