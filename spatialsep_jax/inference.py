"""Separating recordings of any length: input checks, chunking with overlap-add, one talker per
stream across chunks, and outputs at the input's level.

A separator trained on fixed-length segments is run on overlapping chunks (half a segment
apart). The outputs of a PIT-trained model come in an arbitrary order per chunk, so each
chunk's outputs are assigned to the streams by the project's PIT (`losses.pit`) over their
correlation with the previous chunk on the overlap -- summed correlation is the PIT objective of
a squared-error loss, so this is PIT against the previous chunk. Where the overlap cannot decide (both talkers quiet there, or the
assignment's margin is small), the chunk is assigned by the similarity of its outputs' long-term
log spectra to each stream's spectrum so far. Chunks are cross-faded with a periodic Hann
window whose overlapped halves sum to one.

The model sees the input normalised to a fixed peak; its outputs (whose scale a
scale-invariant loss leaves free) are brought back to the input's level by the least-squares
gains that best rebuild the reference channel of the input from the streams.
"""

import logging
import math
import os

import jax.numpy as jnp
import numpy as np
import scipy.signal

from spatialsep_jax import losses

LOG = logging.getLogger("spatialsep_jax.inference")

SILENCE_DBFS = -90.0        # an input whose peak is below this is silent
MODEL_PEAK = 0.9            # the peak the model's input is normalised to
_AMBIGUOUS_MARGIN = 0.1     # relative margin below which the overlap does not decide the order
_QUIET_OVERLAP = 1e-4       # overlap energy (relative to the mean chunk energy) that is silence


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """[T, C] (or [T]) audio from `from_rate` to `to_rate` -> float32: the project's one
  resampling helper, `data_pipeline.corpus_base.resample`."""
  from data_pipeline import corpus_base
  return corpus_base.resample(audio, from_rate, to_rate)


# ------------------------------------------------------------------------------ input checks

def check_finite(audio: np.ndarray, where: str = "the input") -> None:
  """ValueError (one line) when `audio` [T, ...] holds NaN or inf samples."""
  bad = ~np.isfinite(audio)
  if bad.any():
    first = int(np.argwhere(bad)[0][0])
    raise ValueError(f"{where} holds {int(bad.sum())} NaN/inf samples (the first at sample "
                     f"{first}); repair or re-export the recording")


def peak_dbfs(audio: np.ndarray) -> float:
  peak = float(np.max(np.abs(audio))) if audio.size else 0.0
  return 20 * math.log10(peak) if peak > 0 else -math.inf


def is_silent(audio: np.ndarray, threshold_dbfs: float = SILENCE_DBFS) -> bool:
  return peak_dbfs(audio) < threshold_dbfs


def select_channels(audio: np.ndarray, input_channels, where: str = "the input") -> np.ndarray:
  """[T, C_in] in the model's channel order from [T, C_in] or from all six array channels."""
  from data_pipeline.array import CHANNEL_NAMES
  wanted = tuple(input_channels)
  if audio.ndim == 1:
    audio = audio[:, None]
  if audio.shape[1] == len(wanted):
    return audio
  if audio.shape[1] == len(CHANNEL_NAMES):
    return audio[:, [CHANNEL_NAMES.index(c) for c in wanted]]
  raise ValueError(
      f"{where} has {audio.shape[1]} channels but this model takes {len(wanted)} {wanted}; give "
      f"a {len(wanted)}-channel or a 6-channel ({', '.join(CHANNEL_NAMES)}) recording, or a "
      "model with matching data.input_channels")


def read_audio(path: str) -> tuple[np.ndarray, int, str]:
  """([T, C] float32, rate, soundfile subtype) of an audio file; one-line errors."""
  import soundfile
  if not os.path.exists(path):
    raise FileNotFoundError(f"input file {path} does not exist")
  if os.path.isdir(path):
    raise IsADirectoryError(f"input {path} is a folder; give an audio file")
  try:
    info = soundfile.info(path)
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError) as e:
    raise ValueError(f"cannot read {path} as audio ({e}); give a wav/flac file") from None
  if audio.shape[0] == 0:
    raise ValueError(f"{path} holds no samples")
  check_finite(audio, path)
  return audio, int(rate), info.subtype


def check_output_folder(out_dir: str) -> str:
  """Creates `out_dir` and checks that files can be written there, before any work starts."""
  from spatialsep_jax import io_safety
  out_dir = os.path.abspath(out_dir)
  parent = out_dir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise NotADirectoryError(f"output folder {out_dir} cannot be made: {parent} is a file; "
                             "give another --out")
  os.makedirs(out_dir, exist_ok=True)
  if not os.access(out_dir, os.W_OK | os.X_OK):
    raise PermissionError(13, f"output folder {out_dir} is not writable; give another --out",
                          out_dir)
  io_safety.atomic_write(os.path.join(out_dir, ".write_check"), b"ok")
  os.remove(os.path.join(out_dir, ".write_check"))
  return out_dir


# ------------------------------------------------------------------------------ chunk order

def _log_spectrum(x: np.ndarray) -> np.ndarray:
  """Average power spectrum [F] of one chunk stream (64 bins)."""
  nperseg = min(128, len(x))
  _, power = scipy.signal.welch(x, nperseg=nperseg, noverlap=nperseg // 2)
  return power


def _spectral_similarity(history: np.ndarray, current: np.ndarray) -> np.ndarray:
  """[N, N] correlation of log power spectra: history [N, F] (sums) vs current [N, F]."""
  def normalised(p):
    floor = 1e-12 * np.maximum(p.max(axis=-1, keepdims=True), 1e-30)
    logp = np.where(p.max(axis=-1, keepdims=True) > 0, np.log10(p + floor), 0.0)
    logp = logp - logp.mean(axis=-1, keepdims=True)
    return logp / (np.linalg.norm(logp, axis=-1, keepdims=True) + 1e-12)
  return normalised(history) @ normalised(current).T


def chunk_order(previous: np.ndarray, current: np.ndarray, hop: int,
                history: np.ndarray | None = None, typical_energy: float | None = None) -> list:
  """Order of `current`'s outputs [N, segment] that continues the streams of the chunk
  before, `previous` [N, segment], which it overlaps by `hop` samples: PIT over summed
  correlations on the overlap (`losses.pit`); when the overlap does not decide
  (quiet, or a small margin), the whole chunk's spectra against the streams' long-term
  spectra `history` [N, F] decide."""
  full = current
  previous, current = previous[:, -hop:], current[:, :hop]
  score = previous @ current.T                  # [N, N] correlation of stream i with output j
  order = _pit_order(score)
  if history is None or len(order) < 2:
    return order
  energy = float(np.sum(previous ** 2) + np.sum(current ** 2)) / 2
  table = losses.permutations_table(len(order), len(order))  # [K, N]: every order
  totals = score[np.arange(len(order)), table].sum(axis=1)
  chosen = np.all(table == np.asarray(order), axis=1)
  best, runner_up = totals[chosen].max(), totals[~chosen].max()
  quiet = typical_energy is not None and energy < _QUIET_OVERLAP * typical_energy
  if quiet or (best - runner_up) < _AMBIGUOUS_MARGIN * max(energy, 1e-30):
    # A silent stream (all-zero spectrum) scores 0 against every stream: the others decide.
    spectra = np.stack([_log_spectrum(x) for x in full])
    similarity = _spectral_similarity(history, spectra)
    if np.any(similarity):
      order = _pit_order(similarity)
  return order


def _pit_order(score: np.ndarray) -> list:
  """The output for each stream that maximises the summed `score` [streams, outputs]: the
  project's PIT (`losses.pit`) over the loss -score."""
  _, perm = losses.pit(jnp.asarray(-score.T[None], jnp.float32))
  return [int(j) for j in np.asarray(perm[0])]


def separate_long(separate_chunk, audio: np.ndarray, segment: int, batch_size: int = 4
                  ) -> np.ndarray:
  """Separates `audio` [T, C] with `separate_chunk`: [B, segment, C] -> [B, N, segment].

  Returns [N, T] float32. Chunks overlap by half a segment; every chunk's outputs are put in
  the order that continues the streams (`chunk_order`). A recording no longer than a segment
  is separated in one call on its own length (`separate_chunk` then gets [1, T, C]): padding
  it with silence to a segment changes the model's normalisation statistics (the shipped mono
  model loses ~0.5 dB SI-SDRi on 1-s mixtures padded into its 4-s chunks).
  """
  total = audio.shape[0]
  if total <= segment:
    return np.asarray(separate_chunk(np.asarray(audio, np.float32)[None]), np.float32)[0]
  hop = segment // 2
  # Sample x of `padded` is covered by the windows of chunks x // hop - 1 and x // hop, whose
  # halves sum to one; the audio starts one hop in, so ceil(total / hop) + 1 chunks cover it.
  num_chunks = max(1, math.ceil(total / hop))
  padded = np.zeros((num_chunks * hop + segment, audio.shape[1]), np.float32)
  padded[hop:hop + total] = audio
  starts = [c * hop for c in range(num_chunks + 1)]
  chunks = np.stack([padded[s:s + segment] for s in starts])
  outputs = []
  for b in range(0, len(chunks), batch_size):
    outputs.append(np.asarray(separate_chunk(chunks[b:b + batch_size]), np.float32))
  outputs = np.concatenate(outputs)                      # [chunks, N, segment]
  typical = float(np.mean(np.sum(outputs[..., hop:] ** 2, axis=(1, 2)))) or None
  history = np.stack([_log_spectrum(x) * float(np.sum(x ** 2) > 0) for x in outputs[0]])
  for c in range(1, len(outputs)):
    order = chunk_order(outputs[c - 1], outputs[c], segment - hop, history, typical)
    outputs[c] = outputs[c][order]
    history = history + np.stack([_log_spectrum(x) for x in outputs[c]])
  window = scipy.signal.get_window("hann", segment, fftbins=True).astype(np.float32)
  result = np.zeros((outputs.shape[1], padded.shape[0]), np.float32)
  for start, out in zip(starts, outputs):
    result[:, start:start + segment] += out * window
  return result[:, hop:hop + total]


# ------------------------------------------------------------------------------ level

def level_gains(estimates: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Signed gains [S] that make sum_s g_s * estimates[s] the least-squares fit of `reference`
  [T]: each stream at its level and polarity in the input (a scale-invariant loss leaves both
  free, so a model may return a talker sign-flipped). Streams without energy get 0."""
  estimates = np.asarray(estimates, np.float64)
  reference = np.asarray(reference, np.float64)
  gram = estimates @ estimates.T
  rhs = estimates @ reference
  gains = np.zeros(len(estimates))
  active = np.diag(gram) > 0
  if active.any():
    gains[active] = np.linalg.lstsq(gram[np.ix_(active, active)], rhs[active], rcond=1e-10)[0]
  return gains.astype(np.float32)


def separate_recording(separate_chunk, audio: np.ndarray, rate: int, model_rate: int,
                       segment: int, num_sources: int, reference_channel: int = 0,
                       batch_size: int = 4, where: str = "the input") -> np.ndarray:
  """Separates a whole recording [T, C] at `rate` (already in the model's channel order).

  Returns [num_sources, T] float32 at `rate`, at the input's level. NaN/inf input is refused
  (ValueError); a silent input (peak below SILENCE_DBFS) gives silent outputs and a warning,
  without running the model.
  """
  audio = np.asarray(audio, np.float32)
  if audio.ndim == 1:
    audio = audio[:, None]
  check_finite(audio, where)
  if audio.shape[0] == 0:
    raise ValueError(f"{where} holds no samples")
  if is_silent(audio):
    LOG.warning("%s is silent (peak %.1f dBFS, below %.0f dBFS): the outputs are silent too",
                where, peak_dbfs(audio), SILENCE_DBFS)
    return np.zeros((num_sources, audio.shape[0]), np.float32)
  at_model_rate = resample(audio, rate, model_rate)
  peak = float(np.max(np.abs(at_model_rate)))
  estimates = separate_long(separate_chunk, at_model_rate * (MODEL_PEAK / peak), segment,
                            batch_size)[:num_sources]
  check_finite(estimates, f"the model's outputs for {where}")
  gains = level_gains(estimates, at_model_rate[:, reference_channel])
  estimates = estimates * gains[:, None]
  out = resample(estimates.T, model_rate, rate).T
  length = audio.shape[0]
  if out.shape[1] < length:
    out = np.pad(out, ((0, 0), (0, length - out.shape[1])))
  return np.ascontiguousarray(out[:, :length], np.float32)
