"""Oracle masks as separators: upper bounds computed from the references, scored like a model.

An oracle mask (losses.ideal_binary_mask / ideal_ratio_mask) is made from the references'
STFTs and applied to the STFT of the unprocessed signal (the mixture at the reference mic),
then inverted. What it scores is the best any mask of that kind on that STFT could do.
"""

import numpy as np
import scipy.signal

from spatialsep_jax import losses

ORACLE_NAMES = ("ibm", "irm")


def oracle_estimates(mixture: np.ndarray, references: np.ndarray, kind: str,
                     n_fft: int = 256, hop: int = 64) -> np.ndarray:
  """Masked-mixture estimates of each reference.

  Args:
    mixture: `[T]` unprocessed signal.
    references: `[S, T]` the sources as the task scores them.
    kind: "ibm" (ideal binary mask) or "irm" (ideal ratio mask, magnitude ratio).
  Returns:
    `[S, T]` float32 estimates.
  """
  if kind not in ORACLE_NAMES:
    raise ValueError(f"unknown oracle {kind!r}; use some of {ORACLE_NAMES} in config.eval.oracles")
  length = mixture.shape[-1]
  window = scipy.signal.get_window("hann", n_fft)
  stft = lambda x: scipy.signal.stft(x, nperseg=n_fft, noverlap=n_fft - hop, window=window)[2]
  mixture_stft = stft(mixture)                             # [F, L]
  sources_stft = stft(references)                          # [S, F, L]
  # losses' mask functions take [B, S, L, F]
  layout = np.transpose(sources_stft, (0, 2, 1))[None]
  mask_fn = losses.ideal_binary_mask if kind == "ibm" else losses.ideal_ratio_mask
  masks = np.transpose(np.asarray(mask_fn(layout))[0], (0, 2, 1))   # [S, F, L]
  _, estimates = scipy.signal.istft(masks * mixture_stft[None], nperseg=n_fft,
                                    noverlap=n_fft - hop, window=window)
  estimates = estimates[:, :length]
  if estimates.shape[-1] < length:
    estimates = np.pad(estimates, ((0, 0), (0, length - estimates.shape[-1])))
  return estimates.astype(np.float32)
