"""Explicit spatial features (STFT, IPD, ILD) on the separator's encoder frames.

Every function is pure and jittable. Frame `l` of the STFT is centred on sample
`l * hop + center_offset` of the (model-padded) waveform, which is the centre of
the encoder's frame `l`: the SuDoRM-RF encoder (kernel 21, stride 10, padding 10)
covers samples `[10 l - 10, 10 l + 10]`, centred on `10 l`. Samples outside the
signal count as zeros, as in the encoder's zero padding. The window is a
periodic Hann window of `n_fft` samples whose index `n_fft // 2` sits on the
frame centre (the convention of `torch.stft(center=True)`, with zero instead of
reflect padding).

Shapes: `B` batch, `T` samples, `C` channels, `L` frames, `F = n_fft // 2 + 1`.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FEATURE_KINDS = ("ipd", "ild", "ipd_cossin")


def encoder_num_frames(num_samples: int, kernel: int = 21, stride: int = 10,
                       padding: int = 10) -> int:
  """Frames of a Conv1d encoder (PyTorch length rule) on `num_samples` samples."""
  return (num_samples + 2 * padding - kernel) // stride + 1


def encoder_center_offset(kernel: int = 21, padding: int = 10) -> int:
  """Offset of the encoder frame centre from `l * stride` (0 for kernel 21, padding 10)."""
  return (kernel - 1) // 2 - padding


def feature_dim(kind: str, n_fft: int) -> int:
  """Channels one feature kind adds: `F` for 'ipd'/'ild', `2F` for 'ipd_cossin'."""
  if kind not in FEATURE_KINDS:
    raise ValueError(f"unknown spatial feature {kind!r}; use one of {FEATURE_KINDS}")
  num_bins = n_fft // 2 + 1
  return 2 * num_bins if kind == "ipd_cossin" else num_bins


def hann_window(n_fft: int) -> np.ndarray:
  """Periodic Hann window `[n_fft]` (as `scipy.signal.get_window('hann', n_fft)`)."""
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def frame_signal(x: jax.Array, frame_length: int, hop: int, n_frames: int,
                 first_sample: int) -> jax.Array:
  """Frames `[B, n_frames, frame_length]` of `x [B, T]`; frame `l` starts at
  sample `first_sample + l * hop`; samples outside `[0, T)` are zeros."""
  num_samples = x.shape[-1]
  starts = first_sample + hop * np.arange(n_frames)
  pad_left = max(0, -int(starts[0]))
  pad_right = max(0, int(starts[-1]) + frame_length - num_samples)
  padded = jnp.pad(x, ((0, 0), (pad_left, pad_right)))
  # Hop and frame length are co-prime in general (10 vs 512), so frames are a
  # static gather rather than a reshape.
  index = pad_left + starts[:, None] + np.arange(frame_length)[None, :]
  return padded[:, index]


def stft(x: jax.Array, n_fft: int, hop: int, n_frames: int,
         center_offset: int = 0) -> jax.Array:
  """Short-time Fourier transform on encoder-aligned frames.

  Args:
    x: `[B, T]` real waveform.
    n_fft: window and FFT length.
    hop: frame hop in samples (the encoder stride).
    n_frames: number of frames `L` (the encoder's frame count).
    center_offset: frame `l` is centred on sample `l * hop + center_offset`.
  Returns:
    `[B, L, n_fft // 2 + 1]` complex64 spectrum.
  """
  if x.ndim != 2:
    raise ValueError(f"stft expects a [B, T] waveform, got shape {x.shape}")
  frames = frame_signal(x.astype(jnp.float32), n_fft, hop, n_frames,
                        center_offset - n_fft // 2)
  window = jnp.asarray(hann_window(n_fft), jnp.float32)
  return jnp.fft.rfft(frames * window, axis=-1)


def _pair_spectra(mixture: jax.Array, pair: Sequence[int], n_fft: int, hop: int,
                  n_frames: int, center_offset: int) -> tuple[jax.Array, jax.Array]:
  if mixture.ndim != 3:
    raise ValueError(f"spatial features expect a [B, T, C] mixture, got shape {mixture.shape}")
  first, second = (int(index) for index in pair)
  num_channels = mixture.shape[-1]
  if first == second or not (0 <= first < num_channels and 0 <= second < num_channels):
    raise ValueError(
        f"feature pair {tuple(pair)} must name two different channels of a "
        f"{num_channels}-channel mixture; fix model.feature_pair")
  # Features are fixed functions of the input: no gradient flows into the audio.
  mixture = jax.lax.stop_gradient(mixture.astype(jnp.float32))
  return (stft(mixture[..., first], n_fft, hop, n_frames, center_offset),
          stft(mixture[..., second], n_fft, hop, n_frames, center_offset))


def _ipd_from_spectra(spec_i: jax.Array, spec_j: jax.Array) -> jax.Array:
  return jnp.angle(spec_i * jnp.conj(spec_j))


def _ild_from_spectra(spec_i: jax.Array, spec_j: jax.Array, ild_clip_db: float,
                      eps: float) -> jax.Array:
  level = 20.0 * jnp.log10((jnp.abs(spec_i) + eps) / (jnp.abs(spec_j) + eps))
  return jnp.clip(level, -ild_clip_db, ild_clip_db)


def ipd(mixture: jax.Array, pair: Sequence[int] = (0, 1), n_fft: int = 512,
        hop: int = 10, n_frames: int | None = None, center_offset: int = 0) -> jax.Array:
  """Raw inter-channel phase difference `angle(X_i conj(X_j))` in [-pi, pi].

  `mixture [B, T, C]` -> `[B, L, F]`; `n_frames` defaults to `ceil(T / hop)`
  (the encoder frame count for kernel 21, stride 10, padding 10).
  """
  n_frames = -(-mixture.shape[1] // hop) if n_frames is None else n_frames
  return _ipd_from_spectra(*_pair_spectra(mixture, pair, n_fft, hop, n_frames, center_offset))


def ipd_cos_sin(mixture: jax.Array, pair: Sequence[int] = (0, 1), n_fft: int = 512,
                hop: int = 10, n_frames: int | None = None,
                center_offset: int = 0) -> jax.Array:
  """`[cos(IPD), sin(IPD)]` concatenated on the last axis: `[B, T, C]` -> `[B, L, 2F]`."""
  phase = ipd(mixture, pair, n_fft, hop, n_frames, center_offset)
  return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


def ild(mixture: jax.Array, pair: Sequence[int] = (0, 1), n_fft: int = 512,
        hop: int = 10, n_frames: int | None = None, center_offset: int = 0,
        ild_clip_db: float = 30.0, eps: float = 1e-8) -> jax.Array:
  """Inter-channel level difference `20 log10((|X_i| + eps) / (|X_j| + eps))` in dB,
  clipped to `[-ild_clip_db, ild_clip_db]`: `[B, T, C]` -> `[B, L, F]`."""
  n_frames = -(-mixture.shape[1] // hop) if n_frames is None else n_frames
  spectra = _pair_spectra(mixture, pair, n_fft, hop, n_frames, center_offset)
  return _ild_from_spectra(*spectra, ild_clip_db, eps)


def spatial_features(mixture: jax.Array, kinds: Sequence[str], pair: Sequence[int] = (0, 1),
                     n_fft: int = 512, hop: int = 10, n_frames: int | None = None,
                     center_offset: int = 0, ild_clip_db: float = 30.0,
                     eps: float = 1e-8) -> jax.Array:
  """Feature maps of `kinds` ('ipd' raw phase as in the study, 'ild', 'ipd_cossin'),
  concatenated in that order on the last axis.

  `mixture [B, T, C]` -> float32 `[B, L, sum(feature_dim(k, n_fft) for k in kinds)]`
  (`F * len(kinds)` unless 'ipd_cossin' is among them); the STFT is taken once.
  """
  if not kinds:
    raise ValueError("spatial_features needs at least one kind; got an empty tuple")
  for kind in kinds:
    feature_dim(kind, n_fft)
  n_frames = -(-mixture.shape[1] // hop) if n_frames is None else n_frames
  spec_i, spec_j = _pair_spectra(mixture, pair, n_fft, hop, n_frames, center_offset)
  maps = []
  for kind in kinds:
    if kind == "ild":
      maps.append(_ild_from_spectra(spec_i, spec_j, ild_clip_db, eps))
    else:
      phase = _ipd_from_spectra(spec_i, spec_j)
      maps.extend([phase] if kind == "ipd" else [jnp.cos(phase), jnp.sin(phase)])
  return jnp.concatenate(maps, axis=-1)
