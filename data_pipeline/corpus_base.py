"""What every speech corpus shares: speakers, utterances, the `Corpus` interface, resampling and
a mean-F0 estimate. `corpus` (folder corpora) and `espeak_corpus` (the embedded default) both
build on it, so neither imports the other's module to get these.
"""

import abc
import collections
import dataclasses
import fractions
import math

import numpy as np
import scipy.signal

from data_pipeline import noise

SPLITS = ("train", "val", "test")
F0_MIN_HZ = 50.0
F0_MAX_HZ = 450.0


@dataclasses.dataclass(frozen=True)
class Speaker:
  speaker_id: str
  sex: int          # 0 female, 1 male, -1 unknown
  f0_hz: float      # mean F0, nan if unknown


@dataclasses.dataclass(frozen=True)
class Utterance:
  speaker_id: str
  key: str          # file path, or a synthesis key for eSpeak


class Corpus(abc.ABC):
  """Base class: subclasses fill `sample_rate`, `speakers`, `skipped` and `_splits`, and
  `_babble_splits()` when they hold babble speakers (speakers in no split's talker set, whose
  utterances only make babble noise; per split, so test babble voices are unheard in training)."""

  sample_rate: int
  speakers: list[Speaker]
  skipped: collections.Counter
  _splits: dict[str, list[Utterance]]

  def _babble_splits(self) -> dict[str, list[Utterance]] | None:
    """{split: babble utterances}, or None when this corpus was built without babble speakers."""
    return None

  def babble_utterances(self, split: str) -> list[Utterance]:
    """The babble utterances of one split (speakers disjoint from every split's talkers)."""
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    babble = self._babble_splits()
    if babble is None:
      raise ValueError("this corpus was built without babble speakers; build it with "
                       "data.noise='babble' or 'mixed' (corpus.build_corpus)")
    return list(babble[split])

  def babble_speakers(self, split: str) -> list[str]:
    """Sorted babble speaker ids of one split."""
    return sorted({u.speaker_id for u in self.babble_utterances(split)})

  def babble_pool(self, split: str):
    """noise.BabblePool of the split's babble utterances, loaded with `self.load`."""
    by_speaker = collections.defaultdict(list)
    for utterance in self.babble_utterances(split):
      by_speaker[utterance.speaker_id].append(utterance)
    return noise.BabblePool(dict(by_speaker), self.load)

  def utterances(self, split: str) -> list[Utterance]:
    """The utterances of one split ('train' | 'val' | 'test'), sorted by key."""
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    return list(self._splits[split])

  @abc.abstractmethod
  def load(self, utt: Utterance) -> np.ndarray:
    """float32 `[T]` waveform of `utt` at `self.sample_rate`."""

  def speaker_index(self, speaker_id: str) -> int:
    """Index of `speaker_id` in `self.speakers` (what records store)."""
    if not hasattr(self, "_speaker_positions"):
      self._speaker_positions = {s.speaker_id: i for i, s in enumerate(self.speakers)}
    if speaker_id not in self._speaker_positions:
      raise ValueError(f"unknown speaker {speaker_id!r}; use an id from corpus.speakers")
    return self._speaker_positions[speaker_id]

  def split_speakers(self, split: str) -> list[str]:
    """Sorted speaker ids of one split."""
    return sorted({u.speaker_id for u in self.utterances(split)})


MAX_RESAMPLE_FACTOR = 1000  # largest up/down factor of a rate change (44.1 -> 8 kHz: 80/441)


def resample(audio: np.ndarray, from_rate: float, to_rate: float, *, what: str = "the audio",
             dtype=np.float32) -> np.ndarray:
  """`[T]` or `[T, C]` audio from `from_rate` to `to_rate` Hz along its first axis
  (scipy.signal.resample_poly, computed in float64) -> `dtype`; the project's one resampling
  helper (corpora, measured responses, separation inputs, metrics). Rates may be floats (SOFA
  files store them so) when their ratio is a fraction of small terms; `what` names the audio
  in the one-line errors."""
  if not (from_rate > 0 and to_rate > 0):
    raise ValueError(f"cannot resample {what} from {from_rate} Hz to {to_rate} Hz; rates must "
                     "be positive")
  if from_rate == to_rate:
    return np.asarray(audio, dtype)
  ratio = fractions.Fraction(str(float(to_rate))) / fractions.Fraction(str(float(from_rate)))
  if ratio.numerator > MAX_RESAMPLE_FACTOR or ratio.denominator > MAX_RESAMPLE_FACTOR:
    raise ValueError(f"{what}: sample rate {from_rate} Hz cannot be resampled to {to_rate} Hz "
                     f"by a small rational factor; resample the file to {to_rate:g} Hz first")
  resampled = scipy.signal.resample_poly(np.asarray(audio, np.float64), ratio.numerator,
                                         ratio.denominator, axis=0)
  return resampled.astype(dtype)


def estimate_f0(waveform: np.ndarray, sample_rate: int, f0_min: float = F0_MIN_HZ,
                f0_max: float = F0_MAX_HZ) -> float:
  """Mean F0 (Hz) over the voiced frames of `[T]` speech; nan when none is voiced.

  Normalised autocorrelation of 40 ms frames (10 ms hop); a frame counts as voiced
  when it is within 30 dB of the loudest frame and its autocorrelation peak in the
  `[f0_min, f0_max]` lag range exceeds 0.5. Frames more than 40% away from the
  median F0 (octave errors) are left out of the mean. Hand-written because a
  pitch tracker such as librosa.pyin would add a heavy dependency for one number.
  """
  waveform = np.asarray(waveform, np.float64)
  frame_length = int(round(0.04 * sample_rate))
  hop = int(round(0.01 * sample_rate))
  min_lag = max(2, int(math.floor(sample_rate / f0_max)))
  max_lag = min(frame_length - 2, int(math.ceil(sample_rate / f0_min)))
  if waveform.size < frame_length or max_lag <= min_lag:
    return math.nan
  frames = np.lib.stride_tricks.sliding_window_view(waveform, frame_length)[::hop]
  frames = frames - frames.mean(axis=1, keepdims=True)
  energy = np.sum(frames**2, axis=1)
  loud = energy > max(energy.max() * 1e-3, 1e-12)
  if not loud.any():
    return math.nan
  frames = frames[loud] * np.hanning(frame_length)
  n_fft = 1 << (2 * frame_length - 1).bit_length()
  spectrum = np.fft.rfft(frames, n_fft, axis=1)
  autocorrelation = np.fft.irfft(np.abs(spectrum)**2, n_fft, axis=1)[:, :max_lag + 2]
  autocorrelation /= np.maximum(autocorrelation[:, :1], 1e-12)
  search = autocorrelation[:, min_lag:max_lag + 1]
  best = np.argmax(search, axis=1)
  peak = search[np.arange(len(best)), best]
  voiced = peak > 0.5
  if not voiced.any():
    return math.nan
  lag = (best + min_lag)[voiced].astype(np.float64)
  rows = np.nonzero(voiced)[0]
  left = autocorrelation[rows, lag.astype(int) - 1]
  centre = autocorrelation[rows, lag.astype(int)]
  right = autocorrelation[rows, lag.astype(int) + 1]
  curvature = left - 2 * centre + right
  offset = np.where(np.abs(curvature) > 1e-12, 0.5 * (left - right) / np.where(
      np.abs(curvature) > 1e-12, curvature, 1.0), 0.0)
  f0 = sample_rate / (lag + np.clip(offset, -0.5, 0.5))
  median = np.median(f0)
  consistent = np.abs(f0 / median - 1.0) < 0.4
  return float(np.mean(f0[consistent]))
