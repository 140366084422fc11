"""DNSMOS P.835 (SIG: speech quality, BAK: background noise, OVRL: overall; 1..5) and P.808
MOS of a recording, through the `speechmos` package's ONNX models (shipped inside the wheel, so
scoring needs no network). DNSMOS is a learned, non-intrusive metric: it needs no reference,
and it is a prediction of listener ratings, not a measurement.

  pip install speechmos onnxruntime librosa      # the `quality` extra
  from spatialsep_jax import dnsmos
  dnsmos.score(audio, rate)   # {"sig", "bak", "ovrl", "p808", "seconds"}

The models take 16 kHz audio; other rates go through `inference.resample`. speechmos scores
9.01-s windows a second apart (a shorter clip is tiled to 9.01 s by speechmos itself) and
averages them.
"""

import numpy as np

from spatialsep_jax import inference

RATE = 16000


def _speechmos():
  try:
    from speechmos import dnsmos as backend
  except ImportError as e:
    raise ImportError(f"DNSMOS needs the speechmos package ({e}); pip install speechmos "
                      "onnxruntime librosa (the project's `quality` extra)") from None
  return backend


def score(audio: np.ndarray, rate: int, where: str = "the input") -> dict:
  """DNSMOS of mono `audio` [T] (or [T, 1]) at `rate`."""
  audio = np.asarray(audio, np.float32)
  if audio.ndim == 2 and audio.shape[1] == 1:
    audio = audio[:, 0]
  if audio.ndim != 1:
    raise ValueError(f"{where} has shape {audio.shape}; DNSMOS scores one channel: pick one")
  inference.check_finite(audio, where)
  if inference.is_silent(audio):
    raise ValueError(f"{where} is silent (peak {inference.peak_dbfs(audio):.0f} dBFS); DNSMOS "
                     "is not defined for silence")
  at_16k = inference.resample(audio, int(rate), RATE).astype(np.float32)
  peak = float(np.max(np.abs(at_16k)))
  if peak > 1.0:  # speechmos refuses samples outside [-1, 1]; resampling can overshoot
    at_16k = at_16k / peak
  result = _speechmos().run(at_16k, RATE)
  return {"sig": float(result["sig_mos"]), "bak": float(result["bak_mos"]),
          "ovrl": float(result["ovrl_mos"]), "p808": float(result["p808_mos"]),
          "seconds": audio.size / float(rate)}


def score_file(path: str) -> dict:
  """DNSMOS of an audio file (its first channel if it has several)."""
  audio, rate, _ = inference.read_audio(path)
  return {"file": path, "channels": audio.shape[1], **score(audio[:, 0], rate, path)}
