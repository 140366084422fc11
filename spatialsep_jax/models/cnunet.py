"""CNUNet-TB (seed 003): a causal two-branch complex nested U-Net for speech enhancement.

  mixture [B, T, M] -> {"estimates" [B, 1, T], "latent" [B, N, F_b, P, C], "spectrum" ...}

Front end: Hamming STFT (`n_fft` / `hop`, periodic window), compressed spectrum
|X|^p e^{j angle X} (p = 0.2) as real and imaginary parts, DC bin dropped. Six encoder stages of
residual U-blocks (inner depths 6, 5, 4, 4, 4, 3: stride-2 frequency convs, a dilated dense
block, sub-pixel frequency upsampling with inner skips, time-frequency attention, + the block
input, a 1x1 stride-2 frequency downsample), a dilated dense bottleneck, and per branch six
mirrored decoder stages. Two branches share encoder and bottleneck: "mask" (a complex mask M
applied in polar form, |Y| tanh|M| e^{j (angle Y + angle M)}) and "map" (the compressed
clean spectrum directly); each is decompressed and inverted, and the waveforms are averaged.
`complex_layers=False` runs the same network with real layers on (re, im) channels (the
NUNet-style rung of the seed's ladder). With several input channels the network sees every
channel's spectrum and the mask applies to `reference_channel`.

Causal throughout (where this departs from the authors' code): frame-wise or cumulative
normalisation instead of utterance GroupNorm, and time attention through causal 17-tap convs
instead of a symmetric kernel that sees 8 frames ahead (see `complex_layers`). The STFT frames
are causal too: frame n covers samples [(n+1) hop - n_fft, (n+1) hop), and overlap-add emits
the samples a frame completes, so `streaming.py` reproduces this module frame by frame.
Algorithmic latency = `n_fft` samples (32 ms at 512 / 16 kHz).

Stage 1 (teacher fusion): with `teacher_dim > 0` the model takes `references["sources"]`
(the clean target), runs the frozen teacher (`teachers.py`) on it, and fuses its embeddings
after encoder stage 6 (per part: flatten bins x channels, concatenate, 1x1 to bins x channels,
norm); the bottleneck output is emitted as "latent" in every variant (stage 2 replicates it).
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from spatialsep_jax.models import complex_layers as cl
from spatialsep_jax.models import registry

BRANCHES = ("both", "mask", "map")
MASK_EPS = 1e-8
COMPRESS_EPS = 1e-12


# ------------------------------------------------------------------ STFT (causal framing)


@functools.lru_cache(maxsize=8)
def hamming(n_fft: int) -> np.ndarray:
  """Periodic Hamming window [n_fft] (torch.hamming_window's default)."""
  return scipy.signal.get_window("hamming", n_fft, fftbins=True).astype(np.float32)


def frame_signal(padded: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """[B, (N - 1) hop + n_fft] -> [B, N, n_fft] frames at hop multiples."""
  num_frames = (padded.shape[-1] - n_fft) // hop + 1
  index = hop * np.arange(num_frames)[:, None] + np.arange(n_fft)[None, :]
  return padded[..., index]


def compress(spectrum: jax.Array, power: float) -> jax.Array:
  """|X|^power e^{j angle X} of a complex spectrum (0 stays 0)."""
  magnitude_sq = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  return spectrum * (magnitude_sq + COMPRESS_EPS) ** ((power - 1.0) / 2.0)


def decompress(spectrum: jax.Array, power: float) -> jax.Array:
  magnitude_sq = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  return spectrum * magnitude_sq ** ((1.0 / power - 1.0) / 2.0)


def compressed_stft(wave: jax.Array, n_fft: int, hop: int, power: float) -> jax.Array:
  """Offline compressed spectrum of `wave` [B, L] with the model's causal framing (zeros
  before the start), DC kept: [B, ceil(L / hop), n_fft // 2 + 1] complex. Loss terms use it."""
  length = wave.shape[-1]
  frames = -(-length // hop)
  padded = jnp.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(n_fft - hop, frames * hop - length)])
  spectrum = jnp.fft.rfft(frame_signal(padded, n_fft, hop) * hamming(n_fft), axis=-1)
  return compress(spectrum, power)


def overlap_add_norm(n_fft: int, hop: int) -> np.ndarray:
  """[hop] sum over the overlapping frames of the squared window at each block position."""
  window = hamming(n_fft).astype(np.float64)
  return np.sum((window**2).reshape(n_fft // hop, hop), axis=0).astype(np.float32)


# ------------------------------------------------------------------ the network


class UBlock(nn.Module):
  """Residual U-block: `[B, T, F, P, Cin]` -> `[B, T, F, P, out]` (encoders then downsample).

  in 1x1 -> `depth` stride-2 (2 x 3) convs to `mid` -> dilated dense -> `depth` sub-pixel x2
  ups over [h, inner skip] (the last to `out`) -> attention -> + the in-1x1 output."""
  out: int
  mid: int
  depth: int
  dense_layers: int = 6
  norm: str = "frame"
  attention_kernel: int = 17
  attention_window: int = 32

  @nn.compact
  def __call__(self, x):
    x = cl.ConvNormAct(self.out, kernel_t=1, kernel_f=1, norm=self.norm)(x)
    h, skips = x, []
    for _ in range(self.depth):
      h = cl.ConvNormAct(self.mid, stride_f=2, norm=self.norm)(h)
      skips.append(h)
    h = cl.DilatedDense(self.mid, self.dense_layers, inner=True, norm=self.norm)(h)
    for i in range(self.depth):
      features = self.out if i == self.depth - 1 else self.mid
      h = cl.SubPixelUp(features, norm=self.norm)(jnp.concatenate([h, skips[-i - 1]], axis=-1))
    h = cl.TimeFrequencyAttention(self.attention_kernel, self.attention_window)(h)
    return h + x


class CNUNet(nn.Module):
  """See the module docstring. Fields mirror `config.model` (`build` passes them)."""
  num_input_channels: int = 1
  complex_layers: bool = True
  branches: str = "both"
  n_fft: int = 512
  hop: int = 256
  compress_power: float = 0.2
  out_channels: int = 32            # per part (the authors' out_ch=64 is 32 real + 32 imag)
  mid_channels: int = 16
  depths: Sequence[int] = (6, 5, 4, 4, 4, 3)
  dense_layers: int = 6
  norm: str = "frame"
  attention_kernel: int = 17
  attention_window: int = 32
  reference_channel: int = 0
  teacher_dim: int = 0              # > 0: stage 1, fuse teacher embeddings of the clean target
  teacher: Callable | None = None   # frozen fn(wave [B, L]) -> [B, frames, teacher_dim]

  @property
  def delay(self) -> int:
    """Samples by which `core`'s output lags its input (n_fft - hop)."""
    return self.n_fft - self.hop

  def setup_check(self, mixture):
    if mixture.ndim != 3 or mixture.shape[-1] != self.num_input_channels:
      raise ValueError(f"CNUNet expects mixture [B, T, {self.num_input_channels}], got "
                       f"{mixture.shape}")

  def __call__(self, mixture, train: bool = False, references=None):
    """Offline: mixture [B, T, M] -> outputs aligned with the input (estimates [B, 1, T])."""
    self.setup_check(mixture)
    length = mixture.shape[1]
    blocks = -(-length // self.hop) + self.delay // self.hop
    padded = jnp.pad(mixture, ((0, 0), (0, blocks * self.hop - length), (0, 0)))
    teacher_embedding = self._teacher_embedding(references, train)
    outputs = self.core(padded, teacher_embedding)
    outputs["estimates"] = outputs["estimates"][:, :, self.delay:self.delay + length]
    return outputs

  def _teacher_embedding(self, references, train):
    if not self.teacher_dim:
      return None
    if references is None and self.is_initializing():
      # init sees no batch: the fusion parameters are built on a placeholder embedding.
      return jnp.zeros((1, 1, self.teacher_dim), jnp.float32)
    if references is None or "sources" not in references:
      raise ValueError("this CNUNet is a stage-1 model (model.teacher set): it reads the clean "
                       "target, so call it with references={'sources': [B, S, T]} (training "
                       "and validation), or score it with --config.eval.oracle_train_inputs=True "
                       "(marked as an oracle teacher input); it is not an inference model")
    if self.teacher is None:
      raise ValueError("model.teacher_dim > 0 but no teacher function was given")
    clean = references["sources"][:, 0].astype(jnp.float32)
    return jax.lax.stop_gradient(self.teacher(clean))

  @nn.compact
  def core(self, waveform, teacher_embedding=None):
    """The causal map on whole hops: waveform [B, K hop, M] -> estimates [B, 1, K hop] lagging
    the input by `delay` samples. Streaming calls it on consecutive pieces (any K >= 1) with the
    "stream" collection mutable; the concatenated outputs equal one call on the whole signal."""
    n_fft, hop = self.n_fft, self.hop
    batch, samples, channels = waveform.shape
    if samples % hop:
      raise ValueError(f"core takes whole hops of {hop} samples, got {samples}")
    signal = jnp.moveaxis(waveform.astype(jnp.float32), -1, 1)                    # [B, M, L]
    context = cl.time_context(self, signal, n_fft - hop, name="wave", axis=2)
    spectrum = jnp.fft.rfft(frame_signal(context, n_fft, hop) * hamming(n_fft), axis=-1)
    spectrum = compress(jnp.moveaxis(spectrum, 1, -1), self.compress_power)[:, :, 1:]  # [B,N,F,M]
    outputs = self.network(spectrum, teacher_embedding)
    waves = [self._synthesis(spec, name) for name, spec in outputs["spectra"].items()]
    estimate = sum(waves) / len(waves)
    return {"estimates": estimate[:, None, :], "latent": outputs["latent"],
            **{f"spectrum_{name}": spec for name, spec in outputs["spectra"].items()}}

  def _synthesis(self, compressed_bins, name):
    """Compressed bins [B, N, F] (no DC) -> [B, N hop] overlap-added, `delay` samples late."""
    n_fft, hop = self.n_fft, self.hop
    spectrum = decompress(jnp.pad(compressed_bins, ((0, 0), (0, 0), (1, 0))), self.compress_power)
    frames = jnp.fft.irfft(spectrum, n=n_fft, axis=-1) * hamming(n_fft)          # [B, N, n_fft]
    overlap = n_fft // hop
    full = cl.time_context(self, frames, overlap - 1, name=f"overlap_{name}")
    num_frames = frames.shape[1]
    blocks = sum(full[:, j:j + num_frames, (overlap - 1 - j) * hop:(overlap - j) * hop]
                 for j in range(overlap))
    return (blocks / overlap_add_norm(n_fft, hop)).reshape(blocks.shape[0], -1)

  def network(self, spectrum, teacher_embedding=None):
    """Compressed spectrum [B, N, F, M] complex -> {"spectra": {branch: [B, N, F]}, "latent"}."""
    if self.complex_layers:
      x = jnp.stack([jnp.real(spectrum), jnp.imag(spectrum)], axis=3)            # [B,N,F,2,M]
    else:
      x = jnp.concatenate([jnp.real(spectrum), jnp.imag(spectrum)], axis=-1)[:, :, :, None]
    common = dict(dense_layers=self.dense_layers, norm=self.norm,
                  attention_kernel=self.attention_kernel, attention_window=self.attention_window)
    out, mid = self.out_channels, self.mid_channels
    h = cl.ConvNormAct(out, kernel_t=1, kernel_f=1, norm=self.norm, name="input_layer")(x)
    stage_outputs = []
    for index, depth in enumerate(self.depths):
      h = UBlock(out, mid, depth, name=f"encoder{index + 1}", **common)(h)
      h = cl.PartConv(out, kernel_t=1, kernel_f=1, stride_f=2, name=f"downsample{index + 1}")(h)
      stage_outputs.append(h)
    if teacher_embedding is not None:
      h = self._fuse(h, teacher_embedding)
    latent = cl.DilatedDense(out, self.dense_layers, inner=False, norm=self.norm,
                             name="bottleneck")(h)
    branch_names = ("mask", "map") if self.branches == "both" else (self.branches,)
    spectra = {}
    for branch in branch_names:
      d = latent
      for index, depth in enumerate(reversed(self.depths)):
        skip = stage_outputs[-index - 1]
        d = jnp.concatenate([d, skip], axis=-1)
        d = cl.SubPixelUp(2 * out, norm=self.norm, name=f"{branch}_up{index + 1}")(d)
        d = UBlock(out, mid, depth, name=f"{branch}_decoder{index + 1}", **common)(d)
      final = cl.PartConv(1 if self.complex_layers else 2, kernel_t=1, kernel_f=1,
                          name=f"{branch}_output")(d)
      if self.complex_layers:
        estimate = final[..., 0, 0] + 1j * final[..., 1, 0]
      else:
        estimate = final[..., 0, 0] + 1j * final[..., 0, 1]
      if branch == "mask":
        estimate = self._apply_mask(spectrum[..., self.reference_channel], estimate)
      spectra[branch] = estimate
    return {"spectra": spectra, "latent": latent}

  @staticmethod
  def _apply_mask(noisy, mask):
    """|Y| tanh|M| e^{j(angle Y + angle M)} = tanh|M| * Y * M / |M| (no atan2: same value)."""
    magnitude = jnp.abs(mask)
    return jnp.tanh(magnitude) * noisy * mask / (magnitude + MASK_EPS)

  def _fuse(self, h, embedding):
    """Stage 1: per part, [flatten(bins x channels), teacher] -> 1x1 -> norm -> reshape."""
    batch, frames, bins, parts, channels = h.shape
    embedding = resample_frames(embedding.astype(h.dtype), frames)               # [B, N, D]
    embedding = jnp.broadcast_to(embedding, (batch,) + embedding.shape[1:])
    fused = []
    for part in range(parts):
      joined = jnp.concatenate([h[:, :, :, part].reshape(batch, frames, bins * channels),
                                embedding], axis=-1)
      y = nn.Dense(bins * channels, name=f"fusion_{part}")(joined)
      fused.append(y.reshape(batch, frames, bins, 1, channels))
    fused = jnp.concatenate(fused, axis=3)
    return cl.PartNorm(self.norm, name="fusion_norm")(fused)


def resample_frames(values: jax.Array, frames: int) -> jax.Array:
  """Linear interpolation of `values` [B, N', D] onto `frames` frames (align_corners=False,
  as torch's `interpolate(mode='linear')`)."""
  source = values.shape[1]
  if source == frames:
    return values
  position = (np.arange(frames) + 0.5) * source / frames - 0.5
  position = np.clip(position, 0, source - 1)
  lower = np.floor(position).astype(int)
  upper = np.minimum(lower + 1, source - 1)
  weight = jnp.asarray((position - lower)[None, :, None], values.dtype)
  return values[:, lower] * (1 - weight) + values[:, upper] * weight


# ------------------------------------------------------------------ parameter count


def parameter_count(complex_layers: bool = True, branches: str = "both", num_input_channels: int = 1,
                    n_fft: int = 512, out_channels: int = 32, mid_channels: int = 16,
                    depths: Sequence[int] = (6, 5, 4, 4, 4, 3), dense_layers: int = 6,
                    attention_kernel: int = 17, teacher_dim: int = 0, **unused) -> int:
  """The number of parameters of `CNUNet(**fields)`, in closed form, layer by layer as the
  modules above create them (tests check it against the traced count at small widths; it
  gives the authors' widths' count without tracing the full model). Takes `CNUNet` fields
  (others, e.g. `norm`, change no shapes)."""
  del unused
  parts = 2 if complex_layers else 1

  def conv(cin, cout, kt=2, kf=3):                           # PartConv: kernels + bias
    return parts * (kt * kf * cin * cout + cout)

  def norm(c):                                               # PartNorm: scale + bias
    return 2 * parts * c

  prelu = parts                                              # PartPReLU: one slope per part

  def conv_norm_act(cin, cout, kt=2, kf=3):
    return conv(cin, cout, kt, kf) + norm(cout) + prelu

  def subpixel(cin, features):
    return conv(cin, 2 * features) + norm(features) + prelu

  def dense(cin, features, inner):
    half = max(1, cin // 2)
    total = conv(cin, half) + prelu
    for i in range(dense_layers):                            # inputs: all earlier outputs
      c = half * (i + 1)
      total += parts * (6 * c + c * half + half) + norm(half) + prelu
    return total + conv(half, features) + (prelu if inner else parts * features)

  def attention(c):                                          # one gate per part
    k = attention_kernel
    return parts * (2 * (k * c + 1) + 2 * (k + 1))

  def ublock(cin, depth):
    out, mid = out_channels, mid_channels
    total = conv_norm_act(cin, out, 1, 1)
    total += conv_norm_act(out, mid) + (depth - 1) * conv_norm_act(mid, mid)
    total += dense(mid, mid, inner=True)
    total += (depth - 1) * subpixel(2 * mid, mid) + subpixel(2 * mid, out)
    return total + attention(out)

  out = out_channels
  channels_in = num_input_channels if complex_layers else 2 * num_input_channels
  total = conv_norm_act(channels_in, out, 1, 1)
  for depth in depths:
    total += ublock(out, depth) + conv(out, out, 1, 1)
  if teacher_dim:
    flat = (n_fft // 2 // 2 ** len(depths)) * out
    total += parts * ((flat + teacher_dim) * flat + flat) + norm(out)
  total += dense(out, out, inner=False)
  per_branch = sum(subpixel(2 * out, 2 * out) + ublock(2 * out, depth) for depth in depths)
  per_branch += conv(out, 1 if complex_layers else 2, 1, 1)
  return total + per_branch * (2 if branches == "both" else 1)


# ------------------------------------------------------------------ registration


def _fail(message):
  raise registry.ModelConfigError(message)


def validate(config) -> None:
  m = config.model
  if int(config.data.get("num_sources", 1)) < 1:
    _fail("config.data.num_sources must be >= 1")
  if m.branches not in BRANCHES:
    _fail(f"config.model.branches={m.branches!r} is not one of {BRANCHES}")
  if m.norm not in cl.NORM_MODES:
    _fail(f"config.model.norm={m.norm!r} is not one of {cl.NORM_MODES}")
  n_fft, hop = int(m.n_fft), int(m.hop)
  if hop <= 0 or n_fft % hop or n_fft < hop:
    _fail(f"config.model.n_fft={n_fft} must be a multiple of config.model.hop={hop}")
  depths = tuple(int(d) for d in m.depths)
  bins = n_fft // 2
  if not depths or bins % (2 ** len(depths)):
    _fail(f"config.model.n_fft={n_fft} gives {bins} bins (DC dropped), which {len(depths)} "
          f"stages cannot halve evenly; use n_fft = 2^k with {bins} divisible by "
          f"{2 ** len(depths)}, or fewer config.model.depths")
  for index, depth in enumerate(depths):
    stage_bins = bins // 2**index
    if depth < 1 or stage_bins < 2**depth:
      _fail(f"config.model.depths[{index}]={depth}: stage {index + 1} has {stage_bins} bins, "
            f"so its depth must be 1..{int(np.log2(stage_bins))}")
  channels = len(config.data.input_channels)
  if not 0 <= int(m.reference_channel) < channels:
    _fail(f"config.model.reference_channel={m.reference_channel} must index the {channels} "
          "config.data.input_channels")
  if m.get("teacher", "") and m.branches not in BRANCHES:
    _fail("config.model.teacher needs a valid config.model.branches")


def _fields(config) -> dict:
  m = config.model
  return dict(
      num_input_channels=len(config.data.input_channels),
      complex_layers=bool(m.complex_layers), branches=str(m.branches), n_fft=int(m.n_fft),
      hop=int(m.hop), compress_power=float(m.compress_power),
      out_channels=int(m.out_channels), mid_channels=int(m.mid_channels),
      depths=tuple(int(d) for d in m.depths), dense_layers=int(m.dense_layers),
      norm=str(m.norm), attention_kernel=int(m.attention_kernel),
      attention_window=int(m.attention_window), reference_channel=int(m.reference_channel))


def _train_inputs(config):
  """Stage 1 reads the clean target (its teacher's input) in training and validation."""
  return ("sources",) if config.model.get("teacher", "") else ()


@registry.register("cnunet", validate=validate, train_inputs=_train_inputs)
def build(config) -> CNUNet:
  fields = _fields(config)
  teacher_name = config.model.get("teacher", "")
  if teacher_name:
    from spatialsep_jax import teachers
    teacher, dim = teachers.load(config)
    fields.update(teacher=teacher, teacher_dim=dim)
  return CNUNet(**fields)


__all__ = ["BRANCHES", "CNUNet", "UBlock", "build", "compress", "compressed_stft", "decompress",
           "frame_signal", "hamming", "overlap_add_norm", "parameter_count", "resample_frames",
           "validate"]


# The recipe's loss terms register with the model (spectral_terms imports this module's STFT).
from spatialsep_jax import spectral_terms  # noqa: E402,F401
# Stage 2's stored latents join the batches through the loader hook registered here.
from spatialsep_jax import latent_store  # noqa: E402,F401
