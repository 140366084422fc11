"""Separating recordings of any length: chunking with overlap-add and a consistent talker order.

A separator trained on fixed-length segments is run on overlapping chunks; each
chunk's outputs are permuted to best match the previous chunk over their
overlap (outputs of a PIT-trained model come in arbitrary order per chunk),
then cross-faded with a periodic Hann window whose overlapped halves sum to one.
"""

import itertools
import math

import numpy as np
import scipy.signal


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """[T, C] audio from `from_rate` to `to_rate` (polyphase, scipy)."""
  if from_rate == to_rate:
    return audio
  if from_rate <= 0 or to_rate <= 0:
    raise ValueError(f"cannot resample from {from_rate} Hz to {to_rate} Hz; rates must be positive")
  g = math.gcd(int(from_rate), int(to_rate))
  return scipy.signal.resample_poly(audio, to_rate // g, from_rate // g, axis=0).astype(np.float32)


def _best_order(previous: np.ndarray, current: np.ndarray) -> tuple:
  """Permutation of current's outputs [N, L] that best correlates with previous [N, L]."""
  best, best_score = None, -np.inf
  for perm in itertools.permutations(range(len(current))):
    score = sum(float(np.dot(previous[i], current[p])) for i, p in enumerate(perm))
    if score > best_score:
      best, best_score = perm, score
  return best


def separate_long(separate_chunk, audio: np.ndarray, segment: int, batch_size: int = 4
                  ) -> np.ndarray:
  """Separates `audio` [T, C] with `separate_chunk`: [B, segment, C] -> [B, N, segment].

  Returns [N, T] float32. Chunks overlap by half a segment.
  """
  total = audio.shape[0]
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
  for c in range(1, len(outputs)):
    order = _best_order(outputs[c - 1][:, hop:], outputs[c][:, :hop])
    outputs[c] = outputs[c][list(order)]
  window = scipy.signal.get_window("hann", segment, fftbins=True).astype(np.float32)
  result = np.zeros((outputs.shape[1], padded.shape[0]), np.float32)
  for start, out in zip(starts, outputs):
    result[:, start:start + segment] += out * window
  return result[:, hop:hop + total]
