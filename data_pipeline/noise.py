"""Noise of a spatial scene: every kind is rendered through the example's room and head-worn
array, so its interaural cues are those of real sound sources in that room.

Kinds (`data.noise`; `NOISE_KINDS` gives the integer `noise_kind` of the record):
  diffuse        independent pink (1/f power, -3 dB per octave, from 50 Hz) noise signals from
                 `DIFFUSE_DIRECTIONS` azimuths spread evenly around the head;
  babble         `data.babble_talkers` utterances of held-out babble speakers (a corpus pool
                 disjoint from every split's talkers, `corpus_base.Corpus.babble_utterances`),
                 each at the same level from its own azimuth;
  nonstationary  pink noise under a slow random amplitude modulation from one azimuth, plus
                 transients (clicks and door-slam-like low-frequency bursts), each from its own
                 azimuth;
  files          excerpts of the user's noise files (`data.noise` = a folder);
  mixed          each example draws one kind of `data.mixed_noise_kinds`.

Point sources are convolved with the room's reverberant responses; a noise signal starts one
response length before the segment, so the segment holds the room's steady-state field, not
its onset. Levels are set by the caller (scenes.make_example) at the reference mic.
"""

import numpy as np
from scipy import signal

NOISE_KINDS = ("diffuse", "babble", "nonstationary", "files")
MIXABLE_KINDS = ("diffuse", "babble", "nonstationary")
DATA_NOISE_VALUES = ("none", "diffuse", "babble", "nonstationary", "mixed")
DIFFUSE_DIRECTIONS = 8
# Noise sources carry nothing below this: the simulated responses gain ~20 dB towards 0 Hz (all
# image-source gains are positive), so sub-audio noise would otherwise dominate the noise level
# and make a "stationary" noise fluctuate at a few Hz.
NOISE_LOWEST_HZ = 50.0
MODULATION_RATE_HZ = (0.5, 4.0)   # cut-off of the log-envelope's random process
MODULATION_DEPTH_DB = (3.0, 9.0)  # standard deviation of the envelope in dB
TRANSIENTS_PER_SECOND = 1.5
TRANSIENT_LEVEL_DB = (3.0, 15.0)  # transient RMS over its duration re the modulated bed's RMS
CLICK_SECONDS = (0.002, 0.01)
SLAM_SECONDS = (0.08, 0.3)
SLAM_LOWPASS_HZ = 500.0


class NoiseConfigError(ValueError):
  """A data.noise setting that cannot be rendered."""


def kind_index(kind: str) -> int:
  return NOISE_KINDS.index(kind)


def kinds_of(data) -> tuple:
  """The kinds examples of `data` (config.data or its dict) can draw: () for 'none'."""
  noise = data["noise"]
  if noise == "none":
    return ()
  if noise == "mixed":
    kinds = tuple(data.get("mixed_noise_kinds", MIXABLE_KINDS))
    unknown = [k for k in kinds if k not in MIXABLE_KINDS]
    if not kinds or unknown:
      raise NoiseConfigError(f"data.mixed_noise_kinds={kinds} must be a non-empty subset of "
                             f"{MIXABLE_KINDS}")
    return kinds
  if noise in DATA_NOISE_VALUES:
    return (noise,)
  return ("files",)


def uses_babble(data) -> bool:
  return "babble" in kinds_of(data)


def pink_noise(count: int, num_samples: int, rng: np.random.Generator,
               sample_rate: int) -> np.ndarray:
  """[count, num_samples] independent pink noise signals (power density ~ 1/f from
  NOISE_LOWEST_HZ up, nothing below), unit RMS each.

  Hand-written (one spectral weighting of white Gaussian noise): no installed library makes
  coloured noise, and this keeps the render free of another dependency on the accelerator."""
  white = rng.standard_normal((count, num_samples))
  spectrum = np.fft.rfft(white, axis=1)
  frequencies = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
  weights = np.where(frequencies >= NOISE_LOWEST_HZ,
                     1.0 / np.sqrt(np.maximum(frequencies, NOISE_LOWEST_HZ)), 0.0)
  pink = np.fft.irfft(spectrum * weights, n=num_samples, axis=1)
  return (pink / np.sqrt(np.mean(pink ** 2, axis=1, keepdims=True))).astype(np.float32)


def modulation_envelope(num_samples: int, sample_rate: int, rng: np.random.Generator
                        ) -> np.ndarray:
  """[num_samples] positive gain: 10^(m(t)/20) with m a low-passed Gaussian process of a random
  cut-off in MODULATION_RATE_HZ and a standard deviation drawn from MODULATION_DEPTH_DB."""
  cutoff = rng.uniform(*MODULATION_RATE_HZ)
  depth_db = rng.uniform(*MODULATION_DEPTH_DB)
  # The process is drawn at 100 Hz and interpolated: the envelope has nothing above 4 Hz.
  control_rate = 100.0
  num_control = int(np.ceil(num_samples / sample_rate * control_rate)) + 4
  sos = signal.butter(2, cutoff / (control_rate / 2), output="sos")
  process = signal.sosfiltfilt(sos, rng.standard_normal(num_control + 200))[100:100 + num_control]
  process = (process - process.mean()) / max(float(process.std()), 1e-12)
  times = np.arange(num_samples) / sample_rate * control_rate
  log_gain = np.interp(times, np.arange(num_control), process) * depth_db
  return (10.0 ** (log_gain / 20.0)).astype(np.float32)


def transient(kind: str, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
  """One transient [N], unit RMS: a 'click' (broadband burst decaying in ~1 ms) or a 'slam'
  (noise band-passed to NOISE_LOWEST_HZ..SLAM_LOWPASS_HZ, 2-ms attack, exponential decay over
  80-300 ms)."""
  seconds = rng.uniform(*(CLICK_SECONDS if kind == "click" else SLAM_SECONDS))
  length = max(2, int(round(seconds * sample_rate)))
  t = np.arange(length) / sample_rate
  burst = rng.standard_normal(length)
  if kind == "click":
    shape = np.exp(-t / (seconds / 5))
  else:
    nyquist = sample_rate / 2
    sos = signal.butter(2, (NOISE_LOWEST_HZ / nyquist, min(SLAM_LOWPASS_HZ / nyquist, 0.9)),
                        btype="bandpass", output="sos")
    burst = signal.sosfilt(sos, burst)
    shape = np.minimum(t / 0.002, 1.0) * np.exp(-t / (seconds / 4))
  burst = burst * shape
  return (burst / max(float(np.sqrt(np.mean(burst ** 2))), 1e-12)).astype(np.float32)


def even_azimuths(available: np.ndarray, azimuths_deg: np.ndarray, count: int,
                  rng: np.random.Generator) -> np.ndarray:
  """Indices of up to `count` available azimuths closest to `count` evenly spaced directions
  at a random rotation (each used once): [min(count, available)] int."""
  candidates = list(np.flatnonzero(available))
  if len(candidates) <= count:
    return np.asarray(candidates, np.int64)
  rotation = rng.uniform(0.0, 360.0)
  chosen = []
  for target in rotation + np.arange(count) * (360.0 / count):
    distance = np.abs((np.asarray(azimuths_deg)[candidates] - target + 180.0) % 360.0 - 180.0)
    chosen.append(candidates.pop(int(np.argmin(distance))))
  return np.asarray(chosen, np.int64)


def point_source_azimuths(available: np.ndarray, talkers=()) -> np.ndarray:
  """Azimuth indices point noise sources may take: the available ones other than the talkers'
  positions (all available ones when that would leave fewer than two)."""
  candidates = np.flatnonzero(available)
  others = np.setdiff1d(candidates, np.asarray(talkers, np.int64))
  return others if others.size >= 2 else candidates


def spatialise(signals: np.ndarray, responses: np.ndarray, num_samples: int) -> np.ndarray:
  """Point sources [K, num_samples + L] through responses [K, L, M] -> their sum [num_samples, M],
  the last num_samples samples of each source's full overlap with its response (steady state)."""
  length = responses.shape[1]
  if signals.shape[1] != num_samples + length:
    raise ValueError(f"noise signals have {signals.shape[1]} samples; spatialise needs "
                     f"num_samples + response length = {num_samples + length}")
  images = signal.fftconvolve(signals[:, :, None], responses, axes=1)[:, length:length + num_samples]
  return images.sum(axis=0).astype(np.float32)


def diffuse(bank, room: int, num_samples: int, sample_rate: int,
            rng: np.random.Generator) -> np.ndarray:
  """Diffuse pink noise [T, M] from DIFFUSE_DIRECTIONS evenly spread azimuths of `room`."""
  directions = even_azimuths(bank.available[room], bank.azimuths_deg, DIFFUSE_DIRECTIONS, rng)
  responses = np.asarray(bank.reverberant[room, directions], np.float32)
  signals = pink_noise(directions.size, num_samples + responses.shape[1], rng, sample_rate)
  return spatialise(signals, responses, num_samples)


def nonstationary(bank, room: int, num_samples: int, sample_rate: int,
                  rng: np.random.Generator, talkers=()) -> np.ndarray:
  """Amplitude-modulated pink noise from one azimuth plus transients, each from its own
  azimuth (none at the `talkers`' azimuth indices while others remain); [T, M]. At least one
  transient falls inside the segment."""
  responses = np.asarray(bank.reverberant[room], np.float32)                      # [A, L, M]
  length = responses.shape[1]
  total = num_samples + length
  candidates = point_source_azimuths(bank.available[room], talkers)
  bed = pink_noise(1, total, rng, sample_rate)[0] * modulation_envelope(total, sample_rate, rng)
  bed_rms = float(np.sqrt(np.mean(bed ** 2)))
  signals, directions = [bed], [int(rng.choice(candidates))]
  count = max(1, int(rng.poisson(TRANSIENTS_PER_SECOND * num_samples / sample_rate)))
  for _ in range(count):
    burst = transient("click" if rng.random() < 0.5 else "slam", sample_rate, rng)
    burst = burst[:num_samples] * bed_rms * 10 ** (rng.uniform(*TRANSIENT_LEVEL_DB) / 20)
    start = length + int(rng.integers(0, num_samples - burst.size + 1))
    placed = np.zeros(total, np.float32)
    placed[start:start + burst.size] = burst
    signals.append(placed)
    directions.append(int(rng.choice(candidates)))
  return spatialise(np.stack(signals), responses[directions], num_samples)


def babble(dry: np.ndarray, bank, room: int, num_samples: int,
           rng: np.random.Generator, talkers=()) -> np.ndarray:
  """Babble [T, M] of dry utterance crops [K, T + L] (scaled to unit RMS here, so every babble
  talker has the same level), each from its own azimuth (distinct while the room has enough;
  none at the `talkers`' azimuth indices while others remain)."""
  candidates = point_source_azimuths(bank.available[room], talkers)
  directions = rng.choice(candidates, dry.shape[0], replace=dry.shape[0] > candidates.size)
  levels = np.sqrt(np.mean(np.square(dry, dtype=np.float64), axis=1, keepdims=True))
  dry = (dry / np.maximum(levels, 1e-12)).astype(np.float32)
  return spatialise(dry, np.asarray(bank.reverberant[room, directions], np.float32), num_samples)


class BabblePool:
  """The babble utterances of one split: {speaker id: [utterance handles]} and `load(handle)`
  -> float32 [N] at the scene's rate. `draw` picks talkers among the speakers (each once while
  there are enough, utterances without repeats while there are enough)."""

  def __init__(self, utterances_by_speaker: dict, load):
    self.utterances_by_speaker = {s: list(u) for s, u in sorted(utterances_by_speaker.items())
                                  if len(u)}
    if not self.utterances_by_speaker:
      raise NoiseConfigError("the babble pool is empty; give the corpus babble speakers "
                             "(data.espeak.babble_speakers or data.babble_speaker_fraction)")
    self.load = load

  @classmethod
  def from_arrays(cls, arrays_by_speaker: dict) -> "BabblePool":
    """A pool of in-memory utterances {speaker id: [float32 [N], ...]}."""
    return cls({s: [(s, i) for i in range(len(a))] for s, a in arrays_by_speaker.items()},
               lambda handle: np.asarray(arrays_by_speaker[handle[0]][handle[1]], np.float32))

  @property
  def speakers(self) -> list:
    return list(self.utterances_by_speaker)

  def draw(self, rng: np.random.Generator, count: int) -> list:
    """`count` utterance waveforms of distinct speakers (speakers repeat only when the pool has
    fewer than `count`, then with other utterances where possible)."""
    speakers = self.speakers
    order = list(rng.permutation(len(speakers)))
    while len(order) < count:
      order += list(rng.permutation(len(speakers)))
    used, waveforms = set(), []
    for position in order[:count]:
      speaker = speakers[int(position)]
      options = self.utterances_by_speaker[speaker]
      fresh = [i for i in range(len(options)) if (speaker, i) not in used] or list(range(len(options)))
      choice = fresh[int(rng.integers(len(fresh)))]
      used.add((speaker, choice))
      waveforms.append(self.load(options[choice]))
    return waveforms
