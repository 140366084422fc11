"""Sampling a scene of data.num_sources talkers (one: enhancement) and optional noise, mixed into
one example record (DESIGN.md's table).

Recipe (the study's): a bank room of the example's split (rooms are partitioned between train, val
and test unless data.share_rooms_across_splits) and distinct grid azimuths per talker; each
utterance randomly cropped to the segment among the crops no quieter than data.min_crop_level_db
relative to the utterance's active level (shorter ones zero-padded at the start or the end at
random); convolved with its reverberant and direct-path responses (the direct paths at the
reference mic and at data.target_mics); interferers scaled to the drawn target-to-interferer ratio
(RMS of the reverberant images at the reference mic); optional noise (`data_pipeline.noise`: diffuse,
babble, nonstationary, files or mixed, through the same room and mics) scaled to the drawn SNR (RMS
of the summed talker images over RMS of the noise, at the reference mic); the mixture
peak-normalised to 0.9 over all channels with the same gain applied to every stored signal.
"""

import functools
import pathlib
import zlib

import numpy as np
import soundfile
from scipy import signal

from data_pipeline import corpus_base
from data_pipeline import noise as noise_lib
from data_pipeline import shards
from data_pipeline.array import CHANNEL_NAMES, channel_indices, target_mics
from data_pipeline.rooms import RirBank, build_rir_bank

PEAK_LEVEL = 0.9
SPLITS = ("train", "val", "test")
ROOM_SPLIT_STREAM = 104729  # separates the room partition's random stream from the bank's
DIFFUSE_DIRECTIONS = noise_lib.DIFFUSE_DIRECTIONS
ACTIVE_FRAME_SECONDS = 0.02
ACTIVE_RANGE_DB = 40.0
NOISE_EXTENSIONS = (".wav", ".flac", ".ogg")


def load_bank(config, cache_dir=None, num_workers: int = 0, progress: bool = True) -> RirBank:
  """The response bank the config asks for: simulated (cached) or measured."""
  data = config.data
  if data.scene == "simulated":
    return build_rir_bank(config, cache_dir, num_workers, progress)
  if data.scene == "measured":
    from data_pipeline.measured import load_measured_bank
    return load_measured_bank(data.measured_dir, int(data.sample_rate), data.rir_length_seconds)
  raise ValueError(f"data.scene={data.scene!r} is unknown; use 'simulated' or 'measured'")


def split_rooms(num_rooms: int, fractions, seed: int) -> dict[str, np.ndarray]:
  """Room-disjoint partition of a bank's `num_rooms` rooms: {split: sorted room indices [R_split]}.

  Each split gets round(fraction * num_rooms) rooms, at least one; train takes the rest. Which
  rooms go where follows a permutation seeded by `seed` only, so it is the same in every process.
  """
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) <= 0:
    raise ValueError(f"data.room_split={fractions} must be 3 positive fractions (train, val, test)")
  fix = ("raise data.num_rooms (simulated) or add rooms to data.measured_dir, or set "
         "data.share_rooms_across_splits=True (val/test then reuse training responses)")
  if num_rooms < len(SPLITS):
    raise ValueError(f"the response bank has {num_rooms} room(s) but room-disjoint train/val/test "
                     f"splits need at least 3; {fix}")
  total = sum(fractions)
  num_val = max(1, round(fractions[1] / total * num_rooms))
  num_test = max(1, round(fractions[2] / total * num_rooms))
  num_train = num_rooms - num_val - num_test
  if num_train < 1:
    raise ValueError(f"data.room_split={fractions} leaves no training room of {num_rooms}; give "
                     f"train a larger fraction or {fix}")
  order = np.random.default_rng([int(seed), ROOM_SPLIT_STREAM]).permutation(num_rooms)
  bounds = (0, num_train, num_train + num_val, num_rooms)
  return {split: np.sort(order[bounds[i]:bounds[i + 1]]) for i, split in enumerate(SPLITS)}


def rooms_of_split(config, bank: RirBank, split: str) -> np.ndarray:
  """The bank rooms example scenes of `split` draw from: [R_split] int (all rooms when
  data.share_rooms_across_splits)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  if config.data.get("share_rooms_across_splits", False):
    return np.arange(bank.num_rooms)
  return split_rooms(bank.num_rooms, config.data.room_split, int(config.seed))[split]


def scene_seed(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of example `index` of `split`, independent of every other example."""
  return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


def crop_or_pad(utterance: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
  """Random crop of a [N] signal to [num_samples], or zero-padding at the start or end at random."""
  utterance = np.asarray(utterance, np.float32)
  if utterance.ndim != 1:
    raise ValueError(f"utterances must be 1-D, got shape {utterance.shape}; mix down to mono first")
  if utterance.size >= num_samples:
    start = rng.integers(0, utterance.size - num_samples + 1)
    return utterance[start:start + num_samples]
  padding = num_samples - utterance.size
  return np.pad(utterance, (padding, 0) if rng.random() < 0.5 else (0, padding))


class QuietCrop(ValueError):
  """No crop of an utterance reaches data.min_crop_level_db; the caller draws other utterances."""


def active_power(utterance: np.ndarray, sample_rate: int) -> float:
  """Mean power of the 20-ms frames of [N] speech within ACTIVE_RANGE_DB of its loudest frame."""
  utterance = np.asarray(utterance, np.float64)
  frame = max(1, int(round(ACTIVE_FRAME_SECONDS * sample_rate)))
  if utterance.size < frame:
    return float(np.mean(np.square(utterance))) if utterance.size else 0.0
  powers = np.mean(np.square(utterance[:utterance.size // frame * frame].reshape(-1, frame)), axis=1)
  active = powers[powers >= powers.max() * 10 ** (-ACTIVE_RANGE_DB / 10)]
  return float(np.mean(active))


def crop_active(utterance: np.ndarray, num_samples: int, rng: np.random.Generator,
                min_level_db: float, sample_rate: int, what: str = "utterance") -> np.ndarray:
  """`crop_or_pad` drawn only among the crops [num_samples] whose mean power over the segment
  (padding included) is at least `min_level_db` relative to `active_power(utterance)`: uniform
  over those crop positions, so a near-silent crop is never scaled up to the requested TIR.
  All-zero crops are refused at any threshold. Raises QuietCrop when no crop qualifies."""
  utterance = np.asarray(utterance, np.float32)
  if utterance.ndim != 1:
    raise ValueError(f"utterances must be 1-D, got shape {utterance.shape}; mix down to mono first")
  threshold = active_power(utterance, sample_rate) * 10 ** (float(min_level_db) / 10)
  if utterance.size >= num_samples:
    energy = np.concatenate([[0.0], np.cumsum(np.square(utterance, dtype=np.float64))])
    window = energy[num_samples:] - energy[:-num_samples]                        # [N - T + 1]
    starts = np.flatnonzero((window > 0) & (window >= threshold * num_samples))
    if starts.size:
      start = int(rng.choice(starts))
      return utterance[start:start + num_samples]
  else:
    energy = float(np.sum(np.square(utterance, dtype=np.float64)))
    if energy > 0 and energy >= threshold * num_samples:
      return crop_or_pad(utterance, num_samples, rng)
  raise QuietCrop(f"{what} ({utterance.size} samples) has no {num_samples}-sample crop within "
                  f"{-float(min_level_db):g} dB of its active level (data.min_crop_level_db); "
                  "draw another utterance, lower the threshold or drop short/silent files")


def _rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _convolve(signals: np.ndarray, responses: np.ndarray, num_samples: int) -> np.ndarray:
  """signals [K, T] * responses [K, L, C] -> [K, num_samples, C] (first samples of the full one)."""
  return signal.fftconvolve(signals[:, :, None], responses, axes=1)[:, :num_samples].astype(np.float32)


@functools.lru_cache(maxsize=4)
def _noise_files(folder: str) -> tuple:
  files = tuple(sorted(p for p in pathlib.Path(folder).rglob("*")
                       if p.suffix.lower() in NOISE_EXTENSIONS))
  if not files:
    raise ValueError(f"data.noise={folder!r}: no wav/flac/ogg noise files found; use one of "
                     f"{noise_lib.DATA_NOISE_VALUES} or a folder of noise files")
  return files


def _noise_excerpt(path: pathlib.Path, num_samples: int, sample_rate: int,
                   rng: np.random.Generator) -> np.ndarray:
  """A random excerpt [num_samples, C] of a noise file (looped when short)."""
  noise, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
  if file_rate != sample_rate:
    noise = corpus_base.resample(noise, file_rate, sample_rate, what=str(path))
  if noise.shape[0] == 0:
    raise ValueError(f"{path}: empty noise file; remove it from the noise folder")
  if not np.all(np.isfinite(noise)):
    raise ValueError(f"{path}: noise file with NaN/inf samples; remove or repair it")
  repeats = int(np.ceil((num_samples + noise.shape[0]) / noise.shape[0]))
  looped = np.tile(noise, (repeats, 1))
  start = rng.integers(0, noise.shape[0])
  return looped[start:start + num_samples]


def _file_noise(data, bank: RirBank, room: int, num_samples: int,
                rng: np.random.Generator) -> np.ndarray:
  """Noise [T, M] from the folder data.noise: files with exactly M channels are used as recorded;
  otherwise independent excerpts (mixed down to mono) from DIFFUSE_DIRECTIONS random azimuths
  through the room, in its steady state."""
  candidates = np.flatnonzero(bank.available[room])
  azimuths = rng.choice(candidates, min(DIFFUSE_DIRECTIONS, candidates.size), replace=False)
  files = _noise_files(str(data.noise))
  rate = int(data.sample_rate)
  first = _noise_excerpt(files[rng.integers(len(files))], num_samples, rate, rng)
  if first.shape[1] == len(CHANNEL_NAMES):
    return first
  length = bank.rir_length
  excerpts = np.stack([_noise_excerpt(files[rng.integers(len(files))], num_samples + length, rate,
                                      rng).mean(axis=1) for _ in range(azimuths.size)])
  return noise_lib.spatialise(excerpts, np.asarray(bank.reverberant[room, azimuths], np.float32),
                              num_samples)


MAX_BABBLE_DRAWS = 16


def _babble_crops(data, pool, num_samples: int, rng: np.random.Generator) -> np.ndarray:
  """data.babble_talkers crops [K, num_samples] of the pool's utterances, each within
  data.min_crop_level_db of its active level (a too quiet utterance is replaced by another)."""
  if pool is None:
    raise ValueError(f"data.noise={data.noise!r} needs babble utterances; pass make_example a "
                     "noise.BabblePool (dataset renders take it from the corpus's babble speakers)")
  talkers = int(data.get("babble_talkers", 6))
  if talkers < 1:
    raise ValueError(f"data.babble_talkers={talkers} must be >= 1")
  crops = []
  for index, utterance in enumerate(pool.draw(rng, talkers)):
    for _ in range(MAX_BABBLE_DRAWS):
      try:
        crops.append(crop_active(utterance, num_samples, rng, data.min_crop_level_db,
                                 int(data.sample_rate), what=f"babble utterance {index}"))
        break
      except QuietCrop:
        utterance = pool.draw(rng, 1)[0]
    else:
      raise ValueError(f"{MAX_BABBLE_DRAWS} babble utterances gave no crop within "
                       f"{-float(data.min_crop_level_db):g} dB of their active level; lower "
                       "data.min_crop_level_db or use longer babble utterances")
  return np.stack(crops)


def _make_noise(data, bank: RirBank, room: int, num_samples: int, rng: np.random.Generator,
                babble=None, talkers=()) -> tuple[np.ndarray, str]:
  """(noise [T, M] of one kind of `noise.kinds_of(data)` (drawn when there are several), kind).
  Point noise sources avoid the `talkers`' azimuth indices."""
  kinds = noise_lib.kinds_of(data)
  kind = kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
  rate = int(data.sample_rate)
  if kind == "diffuse":
    return noise_lib.diffuse(bank, room, num_samples, rate, rng), kind
  if kind == "nonstationary":
    return noise_lib.nonstationary(bank, room, num_samples, rate, rng, talkers), kind
  if kind == "babble":
    crops = _babble_crops(data, babble, num_samples + bank.rir_length, rng)
    return noise_lib.babble(crops, bank, room, num_samples, rng, talkers), kind
  return _file_noise(data, bank, room, num_samples, rng), kind


def make_example(config, utterances, speakers, bank: RirBank, rng: np.random.Generator,
                 example_id: int, *, split: str, babble=None) -> dict:
  """One example record (DESIGN.md) of `split`: utterances are S 1-D float32 arrays at
  data.sample_rate, speakers S tuples (speaker_index, sex, f0_hz) with sex 0 female, 1 male,
  -1 unknown. The room comes from `rooms_of_split(config, bank, split)`. `babble`: the split's
  noise.BabblePool, needed when data.noise draws babble. With one talker tir_db is +inf and
  separation_deg nan."""
  data = config.data
  num_sources = len(utterances)
  if num_sources != data.num_sources or num_sources < 1 or len(speakers) != num_sources:
    raise ValueError(f"got {num_sources} utterances and {len(speakers)} speakers; pass "
                     f"data.num_sources={data.num_sources} (>= 1) of each")
  if int(bank.sample_rate) != int(data.sample_rate):
    raise ValueError(f"the bank is at {bank.sample_rate} Hz but data.sample_rate={data.sample_rate}; "
                     "rebuild the bank for this config")
  targets_at = target_mics(data)
  for name in (data.reference_mic, *data.input_channels, *targets_at):
    channel_indices(name)
    if name not in bank.channel_names:
      raise ValueError(f"channel {name!r} has no responses in this bank; use one of "
                       f"{', '.join(bank.channel_names)} in data.input_channels/reference_mic/"
                       "target_mics")
  reference = channel_indices(data.reference_mic)[0]
  target_channels = channel_indices(targets_at)
  direct_channels = [reference] + [m for m in target_channels if m != reference]
  num_samples = int(round(data.segment_seconds * data.sample_rate))
  if num_samples < 1:
    raise ValueError(f"data.segment_seconds={data.segment_seconds} gives {num_samples} samples at "
                     f"{data.sample_rate} Hz; set data.segment_seconds > 0")

  candidates = rooms_of_split(config, bank, split)
  rooms_with_enough = candidates[bank.available[candidates].sum(axis=1) >= num_sources]
  if rooms_with_enough.size == 0:
    raise ValueError(f"no room of the {split} split of the bank has {num_sources} azimuths; add "
                     "responses")
  room = int(rng.choice(rooms_with_enough))
  azimuth_indices = rng.choice(np.flatnonzero(bank.available[room]), num_sources, replace=False)

  dry = np.stack([crop_active(u, num_samples, rng, data.min_crop_level_db, int(data.sample_rate),
                              what=f"utterance {index}")
                  for index, u in enumerate(utterances)])                          # [S, T]
  reverberant_rirs = np.asarray(bank.reverberant[room, azimuth_indices], np.float32)  # [S, L, M]
  direct_rirs = np.asarray(bank.direct[room, azimuth_indices][..., direct_channels], np.float32)
  convolved = _convolve(dry, np.concatenate([reverberant_rirs, direct_rirs], axis=2), num_samples)
  num_mics = reverberant_rirs.shape[2]
  images, direct = convolved[:, :, :num_mics], convolved[:, :, num_mics:]         # [S,T,M], [S,T,D]

  tir_db = float(rng.uniform(*data.tir_db_range)) if num_sources > 1 else np.inf
  target_rms = _rms(images[0, :, reference])
  for source in range(1, num_sources):
    gain = target_rms / max(_rms(images[source, :, reference]), 1e-12) * 10 ** (-tir_db / 20)
    images[source] *= gain
    direct[source] *= gain
  speech = images.sum(axis=0)                                                     # [T, M]

  noise_kind = None
  if data.noise == "none":
    noise = np.zeros_like(speech)
    snr_db = np.inf
  else:
    snr_db = float(rng.uniform(*data.snr_db_range))
    noise, noise_kind = _make_noise(data, bank, room, num_samples, rng, babble, azimuth_indices)
    noise *= _rms(speech[:, reference]) / max(_rms(noise[:, reference]), 1e-12) * 10 ** (-snr_db / 20)
  mixture = speech + noise
  gain = PEAK_LEVEL / max(float(np.max(np.abs(mixture))), 1e-12)

  azimuths = np.asarray(bank.azimuths_deg)[azimuth_indices].astype(np.float32)
  if num_sources > 1:
    difference = abs(float(azimuths[0] - azimuths[1])) % 360.0
    separation = min(difference, 360.0 - difference)
  else:
    separation = np.nan
  record = dict(
      mixture=(mixture * gain).astype(np.float16),
      reverberant=(images[:, :, reference] * gain).astype(np.float16),
      direct=(direct[:, :, 0] * gain).astype(np.float16),
      noise=(noise[:, reference] * gain).astype(np.float16),
      azimuth_deg=azimuths,
      distance_m=np.asarray(bank.distance_m)[room, azimuth_indices].astype(np.float32),
      separation_deg=np.float32(separation),
      room_dims=np.asarray(bank.room_dims)[room].astype(np.float32),
      rt60=np.float32(bank.rt60[room]),
      room_index=np.int32(room),
      drr_db=np.asarray(bank.drr_db)[room, azimuth_indices, reference].astype(np.float32),
      tir_db=np.float32(tir_db),
      snr_db=np.float32(snr_db),
      speaker_index=np.array([s[0] for s in speakers], np.int32),
      speaker_sex=np.array([s[1] for s in speakers], np.int32),
      f0_hz=np.array([np.nan if s[2] is None else s[2] for s in speakers], np.float32),
      example_id=np.int64(example_id),
  )
  if noise_kind is not None:
    record["noise_kind"] = np.int32(noise_lib.kind_index(noise_kind))
  if data.store_images:
    record["images"] = (images * gain).astype(np.float16)
  if shards.stores_target_fields(targets_at, data.reference_mic):
    record["reverberant_targets"] = (images[:, :, target_channels] * gain).astype(np.float16)
    record["direct_targets"] = (direct[:, :, [direct_channels.index(m) for m in target_channels]]
                                * gain).astype(np.float16)
    record["noise_targets"] = (noise[:, target_channels] * gain).astype(np.float16)
  return record
