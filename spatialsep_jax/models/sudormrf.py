"""SuDoRM-RF separator (the study's configuration), channels-last, in Flax linen.

Layer order and sizes follow SPEC.md section 1 and the authors' public PyTorch
code (the original SuDoRM-RF `UBlock` with global layer norm and single-slope
PReLU, a (E+1 x 1) mask convolution with a softmax across sources, a decoder
transposed convolution grouped per source):

  mixture [B, T, C_in] -> zero-pad T to a multiple of lcm(enc_stride, 2**upsampling_depth)
  -> encoder Conv1d(C_in -> E, kernel 21, stride 10, padding 10, groups=C_in) + ReLU = s [B, L, E]
  -> [fusion of spatial features, see below] [B, L, C]
  -> GLN(C) -> 1x1 conv C -> bottleneck
  -> num_blocks x U-ConvBlock
  -> 1x1 conv bottleneck -> E (only when bottleneck != E, as the authors)
  -> mask conv (kernel E+1 over the basis axis, padding E/2) -> softmax over the S' outputs
  -> masks * s -> decoder ConvTranspose1d(E S' -> S', kernel 21, stride 10, padding 10, groups=S')
  -> crop/pad to T -> [B, S', T]   (S' = num_sources + extra_outputs)

U-ConvBlock (bottleneck D, block channels C):
  y = PReLU(GLN(1x1 conv D -> C)(x))
  levels = [GLN(dw_conv_k5_s1(y))] then depth - 1 times GLN(dw_conv_k5_s2(previous))
  from the coarsest: finer += nearest_x2(coarser)
  out = PReLU(GLN(GLN(1x1 conv C -> D (PReLU(GLN(finest)))) + x))
i.e. `... 1x1 conv C->D + GLN; residual; GLN + PReLU` as SPEC.md says.

Fusion of explicit features (`features` non-empty, needs two input channels):
  'concat'    (the study): the feature map (257 bins per kind at n_fft 512) is
              concatenated to s along channels, so C = E + feature channels.
              With model.feature_norm='separate' the feature map gets its own global layer
              norm before the concatenation (not in the study; see fuse_features).
  'attention' (this project's design of the study's unpublished "AF" variants):
              gate = sigmoid(1x1 conv F -> E (GLN(features))); fused = s * (1 + gate),
              a residual sigmoid gate that re-weights each encoder basis by the
              spatial evidence of the frame while keeping C = E, so the 16 blocks
              cost what the feature-free model costs.
  feature_init='zero' (with 'concat'; not in the study): instead of the concatenation,
              the feature map (through its own GLN under feature_norm='separate') goes
              through a 1x1 conv F -> D whose kernel and bias start at zero, and is added to
              the bottleneck input: x = to_bottleneck(GLN(s)) + proj(features), C = E.
              "Starts from the bilateral model" means: the parameters are the feature-free
              model's (same names and shapes; with the same seed the same initial values)
              plus `feature_proj`, and at initialisation the output equals the feature-free
              model's output exactly (tests/test_feature_fusion.py). A zero-initialised
              branch concatenated with s could not promise that: its zero channels would
              enter the joint norm's statistics and widen the blocks.
The feature representation is chosen by the kind: 'ipd' the raw wrapped angle (the study),
'ipd_cossin' its cosine and sine (2F channels, continuous at +-pi).
The masks always multiply the un-fused encoder output s.

Departures from the authors' code, on purpose:
  * Their model declares a GLN(E) `ln_mask_in` that `forward` never uses: its
    2 E = 1,024 parameters are not created here, so the two-channel + IPD model
    has 3,815,304 parameters against their reported 3,816,328.
  * Their public spatial variant resamples the feature map to the encoder frames
    with a nearest-neighbour `Upsample` and passes it through a 1x1 conv created
    anew (untrained, re-randomised) on every forward call; here the STFT frames
    are centred on the encoder frames (`features.py`) and concatenated as they are.
  * Their decoder has no output_padding, so it returns T - 9 samples for T a
    multiple of 80; here the decoder keeps the original SuDoRM-RF's
    output_padding = stride - 1 (no parameters), so its last samples are
    computed, and the output is cropped/zero-padded to exactly T.
  * Their input is padded to a multiple of lcm(enc_kernel // 2, 2**depth); here
    lcm(enc_stride, 2**depth) (the same 80 for the study's sizes), and the x2
    upsampling is cropped to the finer length so any length works.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spatialsep_jax import contrastive
from spatialsep_jax import features as feature_lib
from spatialsep_jax.models import layers

REMAT_MODES = ("none", "block", "dots")
FEATURE_INITS = ("default", "zero")  # "zero": the residual feature branch (see module doc)


class UConvBlock(nn.Module):
  """One U-ConvBlock: `[B, L, bottleneck]` -> same shape (see module docstring)."""
  channels: int
  upsampling_depth: int = 4
  dw_kernel: int = 5
  depthwise_impl: str = "slices"
  dtype: Any = jnp.float32
  norm_impl: str = "autodiff"
  uconv_impl: str = "xla"  # 'pallas': each depthwise level (conv + GLN) one fused function

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bottleneck = x.shape[-1]
    y = layers.Pointwise(self.channels, dtype=self.dtype, name="expand")(x)
    y = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl, name="expand_norm")(y)
    y = layers.PReLU(dtype=self.dtype, name="expand_act")(y)
    levels = []
    for level in range(self.upsampling_depth):
      if self.uconv_impl == "pallas":
        levels.append(layers.depthwise_norm_level(
            levels[-1] if levels else y, self.dw_kernel, 1 if level == 0 else 2, self.dtype,
            f"depthwise_{level}", f"depthwise_norm_{level}"))
        continue
      if self.uconv_impl != "xla":
        raise ValueError(f"unknown uconv impl {self.uconv_impl!r}; use one of {layers.UCONV_IMPLS}")
      y = layers.DepthwiseConv(self.dw_kernel, stride=1 if level == 0 else 2,
                               impl=self.depthwise_impl, dtype=self.dtype,
                               name=f"depthwise_{level}")(levels[-1] if levels else y)
      levels.append(layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl,
                                           name=f"depthwise_norm_{level}")(y))
    fused = levels.pop()
    while levels:
      finer = levels.pop()
      fused = finer + layers.upsample_nearest2(fused, finer.shape[1])
    fused = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl, name="fused_norm")(fused)
    fused = layers.PReLU(dtype=self.dtype, name="fused_act")(fused)
    out = layers.Pointwise(bottleneck, dtype=self.dtype, name="project")(fused)
    out = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl, name="project_norm")(out)
    out = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl, name="out_norm")(out + x)
    return layers.PReLU(dtype=self.dtype, name="out_act")(out)


class _ScanBody(nn.Module):
  """One U-ConvBlock in `nn.scan`'s (carry, input) -> (carry, output) form."""
  block: Any

  @nn.compact
  def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
    return self.block(x), None


class MaskConv(nn.Module):
  """The authors' mask layer `Conv2d(1, S', kernel (E+1, 1), padding (E/2, 0))`:
  a convolution along the basis axis shared over time, computed as a matmul with
  a Toeplitz matrix per output. `[B, L, E]` -> logits `[B, L, S', E]`."""
  num_outputs: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    basis = x.shape[-1]
    kernel_size, padding = basis + 1, basis - basis // 2
    init = layers.torch_uniform_init(kernel_size)
    weight = self.param("kernel", init, (self.num_outputs, kernel_size), jnp.float32)
    bias = self.param("bias", init, (self.num_outputs,), jnp.float32)
    # out[o] = sum_i w[i - o + padding] x[i]
    tap = np.arange(basis)[:, None] - np.arange(basis)[None, :] + padding
    valid = (tap >= 0) & (tap < kernel_size)
    toeplitz = jnp.where(valid, weight[:, np.clip(tap, 0, kernel_size - 1)], 0.0)
    logits = jnp.einsum("bli,sio->blso", x.astype(self.dtype),
                        toeplitz.astype(self.dtype))
    return logits + bias.astype(self.dtype)[:, None]


class GroupedDecoder(nn.Module):
  """The decoder `ConvTranspose1d(E S', S', kernel, stride, padding, groups=S',
  output_padding=stride - 1)` as a per-source basis matmul and an overlap-add.
  `[B, L, S', E]` -> `[B, S', L stride + kernel - 1 - 2 padding]` (L stride for
  kernel 21, stride 10, padding 10): output sample n = sum over frames l and taps
  k with l stride + k - padding = n."""
  kernel_size: int = 21
  stride: int = 10
  padding: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, num_frames, num_outputs, basis = x.shape
    init = layers.torch_uniform_init(self.kernel_size)
    weight = self.param("kernel", init, (num_outputs, basis, self.kernel_size), jnp.float32)
    bias = self.param("bias", init, (num_outputs,), jnp.float32)
    frames = jnp.einsum("blse,sek->bslk", x.astype(self.dtype), weight.astype(self.dtype))
    chunks = -(-self.kernel_size // self.stride)
    frames = jnp.pad(frames, ((0, 0), (0, 0), (0, 0), (0, chunks * self.stride - self.kernel_size)))
    frames = frames.reshape(batch, num_outputs, num_frames, chunks, self.stride)
    summed = sum(jnp.pad(frames[:, :, :, chunk], ((0, 0), (0, 0), (chunk, chunks - 1 - chunk), (0, 0)))
                 for chunk in range(chunks))
    signal = summed.reshape(batch, num_outputs, (num_frames + chunks - 1) * self.stride)
    out_length = num_frames * self.stride + self.kernel_size - 1 - 2 * self.padding
    return signal[:, :, self.padding:self.padding + out_length] + bias.astype(self.dtype)[:, None]


class SuDORMRF(nn.Module):
  """SuDoRM-RF mask-based separator: `mixture [B, T, C_in]` -> float32 `[B, S', T]`,
  `S' = num_sources + extra_outputs` (extra outputs, e.g. a noise estimate, come last)."""
  num_sources: int = 2
  num_input_channels: int = 1
  features: Sequence[str] = ()
  feature_pair: Sequence[int] = (0, 1)
  fusion: str = "concat"
  feature_norm: str = "joint"
  feature_init: str = "default"
  n_fft: int = 512
  ild_clip_db: float = 30.0
  enc_basis: int = 512
  enc_kernel: int = 21
  enc_stride: int = 10
  bottleneck: int = 128
  num_blocks: int = 16
  upsampling_depth: int = 4
  dw_kernel: int = 5
  extra_outputs: int = 0
  dtype: Any = jnp.float32
  depthwise_impl: str = "slices"
  norm_impl: str = "autodiff"
  uconv_impl: str = "xla"
  remat: str = "none"
  remat_blocks: int = -1
  scan_blocks: bool = False
  # NASS patch-wise contrastive learning (spatialsep_jax/contrastive.py): with references
  # (training, validation) the outputs add the decoder inputs, the encodings of the clean
  # `pcl_clean_key` talkers and `pcl_noise_key` noise, and the training-only sampler head.
  pcl_head: bool = False
  pcl_clean_key: str = "sources"
  pcl_noise_key: str = "noise"
  pcl_embed_dim: int = 256

  @property
  def num_outputs(self) -> int:
    return self.num_sources + self.extra_outputs

  @property
  def enc_padding(self) -> int:
    return self.enc_kernel // 2

  @property
  def feature_channels(self) -> int:
    return sum(feature_lib.feature_dim(kind, self.n_fft) for kind in self.features)

  @property
  def block_channels(self) -> int:
    """C of the U-ConvBlocks: E, plus the feature channels under 'concat' fusion."""
    if self.features and self.fusion == "concat" and not self.zero_feature_branch:
      return self.enc_basis + self.feature_channels
    return self.enc_basis

  @property
  def zero_feature_branch(self) -> bool:
    """Whether the features enter through the zero-initialised residual projection."""
    if self.feature_init not in FEATURE_INITS:
      raise ValueError(f"unknown model.feature_init {self.feature_init!r}; use one of {FEATURE_INITS}")
    if self.feature_init == "zero" and self.features and self.fusion != "concat":
      raise ValueError("model.feature_init='zero' replaces the 'concat' fusion; "
                       f"model.fusion={self.fusion!r} has its own path")
    return bool(self.features) and self.feature_init == "zero"

  @property
  def length_multiple(self) -> int:
    return math.lcm(self.enc_stride, 2 ** self.upsampling_depth)

  def encode(self, mixture: jax.Array) -> jax.Array:
    """Encoder + ReLU: `[B, T', C_in]` -> `[B, L, E]` in the compute dtype."""
    fan_in = self.enc_kernel
    encoder = nn.Conv(self.enc_basis, (self.enc_kernel,), strides=(self.enc_stride,),
                      padding=[(self.enc_padding, self.enc_padding)],
                      feature_group_count=self.num_input_channels, dtype=self.dtype,
                      param_dtype=jnp.float32, kernel_init=layers.torch_uniform_init(fan_in),
                      bias_init=layers.torch_uniform_init(fan_in), name="encoder")
    return nn.relu(encoder(mixture.astype(self.dtype)))

  def feature_map(self, mixture: jax.Array, num_frames: int) -> jax.Array:
    """The spatial feature map `[B, L, F_total]` on the encoder frames (compute dtype)."""
    return feature_lib.spatial_features(
        mixture, tuple(self.features), self.feature_pair, self.n_fft, self.enc_stride,
        n_frames=num_frames,
        center_offset=feature_lib.encoder_center_offset(self.enc_kernel, self.enc_padding),
        ild_clip_db=self.ild_clip_db).astype(self.dtype)

  def feature_branch(self, mixture: jax.Array, num_frames: int) -> jax.Array:
    """`feature_init='zero'`: proj(features) `[B, L, bottleneck]`, exactly zero at init."""
    feature_map = self.feature_map(mixture, num_frames)
    if self.feature_norm == "separate":
      feature_map = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl,
                                           name="feature_norm")(feature_map)
    projection = nn.Dense(self.bottleneck, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                          name="feature_proj")
    out = projection(feature_map)
    self.sow("intermediates", "feature_branch_output", out)  # diagnostics only
    return out

  def fuse_features(self, encoded: jax.Array, mixture: jax.Array) -> jax.Array:
    """Spatial features on the encoder frames, fused with `encoded [B, L, E]` (identity
    without features or with the zero-initialised branch, which `__call__` adds later)."""
    if not self.features or self.zero_feature_branch:
      return encoded
    feature_map = self.feature_map(mixture, encoded.shape[1])
    if self.fusion == "concat":
      if self.feature_norm == "separate":
        # Raw IPD (rad) and ILD (dB) have far larger variances than the encoder output, so in
        # the study's single joint norm they dominate its statistics; this variant normalises
        # the feature map on its own first (2 x feature-channel parameters).
        feature_map = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl,
                                             name="feature_norm")(feature_map)
      return jnp.concatenate([encoded, feature_map], axis=-1)
    normed = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl,
                                    name="feature_norm")(feature_map)
    gate = nn.sigmoid(layers.Pointwise(self.enc_basis, dtype=self.dtype, name="feature_gate")(normed))
    return encoded * (1 + gate)

  def blocks(self, x: jax.Array) -> jax.Array:
    """The U-ConvBlock stack `[B, L, bottleneck]` -> same: unrolled (`block_<i>` parameters)
    or, with `scan_blocks`, one `nn.scan` over stacked parameters (`blocks`; compiles one
    block instead of `num_blocks`). `remat` recomputes each block in the backward pass
    ('block': keeps only block inputs) or keeps only its matmul outputs ('dots'), in the
    first `remat_blocks` blocks (all when negative; a partial count needs unrolled blocks):
    the others keep their activations, trading memory for the recomputation."""
    rematted = UConvBlock
    if self.remat != "none":
      policy = {"block": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
      if self.remat not in policy:
        raise ValueError(f"unknown model.remat {self.remat!r}; use one of {REMAT_MODES}")
      rematted = nn.remat(UConvBlock, policy=policy[self.remat], prevent_cse=not self.scan_blocks)
    num_rematted = self.num_blocks if self.remat_blocks < 0 else min(self.remat_blocks,
                                                                       self.num_blocks)
    if self.scan_blocks and num_rematted not in (0, self.num_blocks):
      raise ValueError(f"model.remat_blocks={self.remat_blocks} rematerialises some of the "
                       f"{self.num_blocks} blocks, which needs model.scan_blocks=False")
    make = lambda block_class, **kw: block_class(
        self.block_channels, self.upsampling_depth, self.dw_kernel, self.depthwise_impl,
        self.dtype, self.norm_impl, uconv_impl=self.uconv_impl, **kw)
    if not self.scan_blocks:
      for index in range(self.num_blocks):
        block_class = rematted if index < num_rematted else UConvBlock
        x = make(block_class, name=f"block_{index}")(x)
      return x
    block_class = rematted if num_rematted else UConvBlock
    scanned = nn.scan(_ScanBody, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=self.num_blocks)
    x, _ = scanned(make(block_class, parent=None), name="blocks")(x, None)
    return x

  @nn.compact
  def __call__(self, mixture: jax.Array, train: bool = False, references: dict | None = None):
    """`[B, T, C_in]` -> estimates `[B, S', T]`, or with `pcl_head` and references the dict
    of `contrastive.representation_outputs`. `train` changes nothing (no dropout here)."""
    del train
    if mixture.ndim != 3 or mixture.shape[-1] != self.num_input_channels:
      raise ValueError(f"SuDORMRF expects a [B, T, {self.num_input_channels}] mixture, "
                       f"got shape {mixture.shape}; check data.input_channels")
    num_samples = mixture.shape[1]
    padded_length = -(-num_samples // self.length_multiple) * self.length_multiple
    mixture = jnp.pad(mixture.astype(jnp.float32),
                      ((0, 0), (0, padded_length - num_samples), (0, 0)))

    clean = None
    if self.pcl_head and references is not None:
      clean = contrastive.clean_signals(references, self.pcl_clean_key, self.pcl_noise_key,
                                        self.num_input_channels, padded_length)
    encoded, clean_encoded = contrastive.encode_with_clean(self.encode, mixture, clean)
    x = self.fuse_features(encoded, mixture)
    self.sow("intermediates", "input_norm_input", x)  # no-op unless asked for (diagnostics)
    x = layers.GlobalLayerNorm(dtype=self.dtype, impl=self.norm_impl, name="input_norm")(x)
    x = layers.Pointwise(self.bottleneck, dtype=self.dtype, name="to_bottleneck")(x)
    if self.zero_feature_branch:
      x = x + self.feature_branch(mixture, encoded.shape[1])
    x = self.blocks(x)
    if self.bottleneck != self.enc_basis:
      x = layers.Pointwise(self.enc_basis, dtype=self.dtype, name="to_basis")(x)
    logits = MaskConv(self.num_outputs, dtype=self.dtype, name="mask")(x)
    masks = jax.nn.softmax(logits.astype(jnp.float32), axis=2).astype(self.dtype)
    decoder_inputs = masks * encoded[:, :, None, :]
    estimates = GroupedDecoder(self.enc_kernel, self.enc_stride, self.enc_padding,
                               dtype=self.dtype, name="decoder")(decoder_inputs)
    estimates = estimates[:, :, :num_samples]
    estimates = jnp.pad(estimates, ((0, 0), (0, 0), (0, num_samples - estimates.shape[-1])))
    estimates = estimates.astype(jnp.float32)
    if not self.pcl_head:
      return estimates
    head = contrastive.head_if_needed(self, references, self.pcl_embed_dim)
    return contrastive.representation_outputs(estimates, decoder_inputs, clean_encoded, head)
