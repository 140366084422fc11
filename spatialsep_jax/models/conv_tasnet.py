"""A Conv-TasNet-style single-channel enhancer (Luo & Mesgarani 2019, as seed 004 builds it).

Signal path of one side (`B` batch, `T` samples, `K` frames, `N` latent channels):

  waveform [B, T] -> zero padding (stride samples in front, up to whole frames behind)
    -> encoder: learned Conv1D(N, kernel L, stride L/2, no bias, linear, no padding)
                or the STFT magnitude (sqrt-Hann window of L samples, hop L/2, N = L/2 + 1)
    -> latent [B, K, N]
    -> TCN: norm -> 1x1 N -> B, then R repeats of X blocks
            [1x1 B -> H, PReLU, norm, depthwise conv (kernel P, dilation 2^x), PReLU, norm,
             1x1 H -> B (residual), 1x1 H -> S (skip)], skips summed -> [B, K, S]
    -> masker: PReLU -> 1x1 S -> N -> softmax over N (or sigmoid) -> mask [B, K, N]
    -> mask x latent -> decoder: learned ConvTranspose1D(kernel L, stride L/2, no bias, tanh)
                                 or inverse STFT of the masked magnitude with the noisy phase
    -> [B, T].

Causal (`causal=True`): the depthwise convolutions see only past frames (left padding) and the
norms are per-frame channel norms (cLN); frame k covers samples [(k-1) L/2, (k+1) L/2), so
output sample t depends on input samples up to t + L - 1 only: the algorithmic latency is one
encoder window, L samples. Non-causal: symmetric padding and global layer norm (gLN).

`ConvTasNet` exposes the stages (`encode`, `separate`, `mask`, `decode`) so that the binaural
fusion model (`fusion.py`) can join two sides between them. Registered as `conv_tasnet`: the
mono enhancer of `data.input_channels[0]`, output `estimates [B, 1, T]`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spatialsep_jax.models import registry

ENCODERS = ("learned", "stft")
MASK_ACTIVATIONS = ("softmax", "sigmoid")
DECODER_ACTIVATIONS = ("tanh", "linear")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
NORM_EPS = 1e-8  # Conv-TasNet's cLN/gLN epsilon


def sqrt_hann(length: int) -> np.ndarray:
  """Periodic sqrt-Hann window `[length]`: its square overlap-adds to 1 at hop length/2, so
  analysis and synthesis with it reconstruct the interior of the signal exactly."""
  return np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length))


def num_frames(num_samples: int, kernel: int) -> int:
  """Frames `K` of a side on `num_samples` samples (stride kernel/2, one stride of zeros in
  front, zeros behind up to whole frames): the last frame reaches past the last sample."""
  stride = kernel // 2
  return -(-num_samples // stride) + 1


def pad_to_frames(waveform: jax.Array, kernel: int) -> jax.Array:
  """`[B, T]` -> `[B, (K + 1) * L/2]`: stride zeros in front, zeros behind to whole frames."""
  stride = kernel // 2
  frames = num_frames(waveform.shape[-1], kernel)
  total = (frames + 1) * stride
  return jnp.pad(waveform, ((0, 0), (stride, total - stride - waveform.shape[-1])))


def frames_of(padded: jax.Array, kernel: int) -> jax.Array:
  """Half-overlapping frames of a padded `[B, (K + 1) s]` signal -> `[B, K, 2 s]` (s = L/2);
  a reshape, since the hop divides the frame."""
  stride = kernel // 2
  blocks = padded.reshape(padded.shape[0], -1, stride)
  return jnp.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=-1)


def overlap_add(frames: jax.Array) -> jax.Array:
  """Inverse of `frames_of` up to the window: `[B, K, 2 s]` -> `[B, (K + 1) s]`, summing the
  second half of frame k onto the first half of frame k + 1."""
  stride = frames.shape[-1] // 2
  first, second = frames[..., :stride], frames[..., stride:]
  zeros = jnp.zeros_like(first[:, :1])
  blocks = jnp.concatenate([first, zeros], axis=1) + jnp.concatenate([zeros, second], axis=1)
  return blocks.reshape(frames.shape[0], -1)


def channel_norm(causal: bool, dtype, name: str | None = None) -> nn.Module:
  """cLN (per frame over channels) when causal, else gLN (per example over frames and
  channels); per-channel gain and bias either way. Operates on `[B, K, C]`."""
  axes = -1 if causal else (1, 2)
  return nn.LayerNorm(epsilon=NORM_EPS, reduction_axes=axes, feature_axes=-1, dtype=dtype,
                      name=name)


class DepthwiseDilatedConv(nn.Module):
  """Depthwise conv over frames `[B, K, C]` -> `[B, K, C]`, kernel P, dilation d; causal
  (left padding (P - 1) d) or centred (the padding split in two, the extra sample behind)."""
  kernel_size: int
  dilation: int
  causal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    bound = 1.0 / np.sqrt(self.kernel_size)  # PyTorch's default for a depthwise Conv1d
    kernel = self.param("kernel", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound,
                                                                  bound),
                        (self.kernel_size, 1, channels))
    bias = self.param("bias", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound),
                      (channels,))
    span = (self.kernel_size - 1) * self.dilation
    padding = (span, 0) if self.causal else (span // 2, span - span // 2)
    out = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,), padding=[padding],
        rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=channels)
    return out + bias.astype(self.dtype)


class TemporalBlock(nn.Module):
  """One TCN block: `[B, K, B_]` -> (residual output `[B, K, B_]`, skip `[B, K, S]`)."""
  hidden: int
  skip: int
  kernel_size: int
  dilation: int
  causal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bottleneck = x.shape[-1]
    y = nn.Conv(self.hidden, (1,), dtype=self.dtype, name="expand")(x)
    y = channel_norm(self.causal, self.dtype, "norm_1")(nn.PReLU(name="prelu_1")(y))
    y = DepthwiseDilatedConv(self.kernel_size, self.dilation, self.causal, self.dtype,
                             name="depthwise")(y)
    y = channel_norm(self.causal, self.dtype, "norm_2")(nn.PReLU(name="prelu_2")(y))
    residual = nn.Conv(bottleneck, (1,), dtype=self.dtype, name="residual")(y)
    skip = nn.Conv(self.skip, (1,), dtype=self.dtype, name="skip")(y)
    return x + residual, skip


class TCN(nn.Module):
  """Latent `[B, K, N]` -> summed skip outputs `[B, K, S]`; with `return_blocks`, also the
  residual stream after every block (for activation-variance measurements)."""
  bottleneck: int
  hidden: int
  skip: int
  kernel_size: int
  num_blocks: int          # X: dilations 1, 2, ..., 2^(X-1)
  num_repeats: int         # R
  causal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latent, return_blocks: bool = False):
    x = channel_norm(self.causal, self.dtype, "input_norm")(latent.astype(self.dtype))
    x = nn.Conv(self.bottleneck, (1,), dtype=self.dtype, name="bottleneck")(x)
    skips, stream = 0.0, []
    for repeat in range(self.num_repeats):
      for block in range(self.num_blocks):
        x, skip = TemporalBlock(self.hidden, self.skip, self.kernel_size, 2**block, self.causal,
                                self.dtype, name=f"block_{repeat}_{block}")(x)
        skips = skips + skip
        stream.append(x)
    return (skips, stream) if return_blocks else skips


class ConvTasNet(nn.Module):
  """One side: waveform `[B, T]` -> enhanced waveform `[B, T]` (float32), in stages.

  Fields mirror `config.model` (see `configs/fusion.py`): `encoder` learned | stft,
  `num_basis` N (learned encoder only; the STFT's N is kernel/2 + 1), `kernel` L (even; stride
  L/2), `bottleneck` B, `hidden` H, `skip` S, `dw_kernel` P, `num_blocks` X, `num_repeats` R.
  """
  encoder: str = "learned"
  num_basis: int = 512
  kernel: int = 64
  bottleneck: int = 64
  hidden: int = 256
  skip: int = 64
  dw_kernel: int = 3
  num_blocks: int = 2
  num_repeats: int = 2
  causal: bool = False
  mask_activation: str = "softmax"
  decoder_activation: str = "tanh"
  dtype: Any = jnp.float32

  @property
  def latent_channels(self) -> int:
    return self.num_basis if self.encoder == "learned" else self.kernel // 2 + 1

  def setup(self):
    if self.encoder == "learned":
      self.encoder_conv = nn.Conv(self.num_basis, (self.kernel,), strides=(self.kernel // 2,),
                                  padding="VALID", use_bias=False, name="encoder")
      self.decoder_basis = self.param("decoder", nn.initializers.lecun_normal(),
                                      (self.num_basis, self.kernel))
    self.tcn_net = TCN(self.bottleneck, self.hidden, self.skip, self.dw_kernel, self.num_blocks,
                       self.num_repeats, self.causal, self.dtype, name="tcn")
    self.mask_prelu = nn.PReLU(name="mask_prelu")
    self.mask_conv = nn.Conv(self.latent_channels, (1,), dtype=self.dtype, name="mask_conv")

  def encode(self, waveform):
    """`[B, T]` -> (latent `[B, K, N]` float32, side info for `decode`: the STFT or None)."""
    padded = pad_to_frames(waveform.astype(jnp.float32), self.kernel)
    if self.encoder == "learned":
      return self.encoder_conv(padded[..., None]), None
    frames = frames_of(padded, self.kernel) * jnp.asarray(sqrt_hann(self.kernel), jnp.float32)
    spectrum = jnp.fft.rfft(frames, axis=-1)
    return jnp.abs(spectrum), spectrum

  def separate(self, latent, return_blocks: bool = False):
    """TCN: `[B, K, N]` -> `[B, K, S]` (and the residual stream per block)."""
    return self.tcn_net(latent, return_blocks)

  def mask(self, tcn_output):
    """`[B, K, S]` -> mask `[B, K, N]` float32 (softmax over N, or sigmoid)."""
    logits = self.mask_conv(self.mask_prelu(tcn_output)).astype(jnp.float32)
    if self.mask_activation == "softmax":
      return jax.nn.softmax(logits, axis=-1)
    return jax.nn.sigmoid(logits)

  def decode(self, masked_latent, side_info, num_samples: int):
    """Masked latent `[B, K, N]` (+ the STFT for the stft encoder) -> waveform `[B, T]`."""
    if self.encoder == "learned":
      frames = jnp.einsum("bkn,nl->bkl", masked_latent.astype(jnp.float32), self.decoder_basis)
    else:
      spectrum = side_info
      # Masked magnitude with the noisy phase: scaling each bin by mask * |X| / |X|.
      gain = masked_latent / jnp.maximum(jnp.abs(spectrum), 1e-12)
      frames = jnp.fft.irfft(spectrum * gain, n=self.kernel, axis=-1)
      frames = frames * jnp.asarray(sqrt_hann(self.kernel), jnp.float32)
    stride = self.kernel // 2
    waveform = overlap_add(frames)[:, stride:stride + num_samples]
    if self.encoder == "learned" and self.decoder_activation == "tanh":
      waveform = jnp.tanh(waveform)
    return waveform

  def __call__(self, waveform):
    latent, side_info = self.encode(waveform)
    masked = self.mask(self.separate(latent)) * latent
    return self.decode(masked, side_info, waveform.shape[-1])


def side_from_config(model_config) -> ConvTasNet:
  """A `ConvTasNet` side from `config.model` fields."""
  return ConvTasNet(
      encoder=model_config.encoder, num_basis=model_config.num_basis,
      kernel=model_config.kernel, bottleneck=model_config.bottleneck,
      hidden=model_config.hidden, skip=model_config.skip, dw_kernel=model_config.dw_kernel,
      num_blocks=model_config.num_blocks, num_repeats=model_config.num_repeats,
      causal=bool(model_config.causal), mask_activation=model_config.mask_activation,
      decoder_activation=model_config.decoder_activation,
      dtype=DTYPES[model_config.get("dtype", "float32")])


def validate_side(config) -> None:
  """One-line `ModelConfigError` for a bad Conv-TasNet field of `config.model`."""
  model = config.model
  required = ("encoder", "num_basis", "kernel", "bottleneck", "hidden", "skip", "dw_kernel",
              "num_blocks", "num_repeats", "causal", "mask_activation", "decoder_activation")
  missing = [field for field in required if field not in model]
  if missing:
    raise registry.ModelConfigError(f"config.model lacks {', '.join(missing)}; start from "
                                    "configs/fusion.py")
  if model.encoder not in ENCODERS:
    raise registry.ModelConfigError(f"config.model.encoder={model.encoder!r} is not one of "
                                    f"{ENCODERS}")
  if model.kernel < 2 or model.kernel % 2:
    raise registry.ModelConfigError(f"config.model.kernel={model.kernel} must be even and >= 2 "
                                    "(the stride is kernel/2)")
  for field in ("num_basis", "bottleneck", "hidden", "skip", "dw_kernel", "num_blocks",
                "num_repeats"):
    if int(model[field]) < 1:
      raise registry.ModelConfigError(f"config.model.{field}={model[field]} must be >= 1")
  if model.mask_activation not in MASK_ACTIVATIONS:
    raise registry.ModelConfigError(f"config.model.mask_activation={model.mask_activation!r} "
                                    f"is not one of {MASK_ACTIVATIONS}")
  if model.decoder_activation not in DECODER_ACTIVATIONS:
    raise registry.ModelConfigError(f"config.model.decoder_activation="
                                    f"{model.decoder_activation!r} is not one of "
                                    f"{DECODER_ACTIVATIONS}")
  if model.get("dtype", "float32") not in DTYPES:
    raise registry.ModelConfigError(f"config.model.dtype={model.dtype!r} is not one of "
                                    f"{tuple(DTYPES)}")


class MonoEnhancer(nn.Module):
  """`conv_tasnet`: mixture `[B, T, C]` -> `{"estimates": [B, 1, T]}` from channel 0."""
  side: ConvTasNet
  num_input_channels: int = 1

  def __call__(self, mixture, train: bool = False):
    del train
    return {"estimates": self.side(mixture[..., 0])[:, None, :]}


def _validate_mono(config) -> None:
  validate_side(config)
  if len(config.data.input_channels) != 1:
    raise registry.ModelConfigError(
        f"conv_tasnet enhances one channel but data.input_channels has "
        f"{len(config.data.input_channels)}; give one channel or use model.name='fusion'")


@registry.register("conv_tasnet", validate=_validate_mono)
def build_conv_tasnet(config):
  return MonoEnhancer(side_from_config(config.model),
                      len(config.data.input_channels))
