"""Head-filtered multichannel room impulse responses and the RIR bank.

pyroomacoustics' image-source model (shoebox, target RT60 via Sabine's formula) supplies the image
positions and their wall damping; the head is not one of pyroomacoustics' point microphones. For
every mic the RIR is built in the frequency domain as

  RIR_m(f) = sum_i g_i / (4 pi r_i) exp(-j 2 pi f r_i / c) H(f, angle(image_i, mic_m))

with H the rigid-sphere HRTF of `data_pipeline.head` and r_i the distance from the image to the
head centre. Image orders are capped at `ISM_MAX_ORDER`. Images up to reflection order `EARLY_MAX_ORDER` are summed exactly (fractional
delays, HRTF at 0.5 deg resolution). The dense late field (often >10^5 images) would cost
images x frequencies complex exponentials per mic, so later images are grouped by sample-rounded
delay into impulse trains, one per 5-deg incidence-angle bin (split linearly between neighbouring
bins), filtered by that bin's HRTF and summed.
"""

import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil

import numpy as np
import pyroomacoustics as pra
import tqdm
from pyroomacoustics.experimental import measure_rt60
from scipy import fft as sp_fft

from data_pipeline.array import CHANNEL_NAMES, MIC_DIRECTIONS
from data_pipeline.head import SPEED_OF_SOUND, SphereHrtfTable, hrtf_table

BANK_VERSION = "rirbank-v1"
EARLY_MAX_ORDER = 3
LATE_ANGLE_STEP_DEG = 5.0
WALL_MARGIN_M = 0.5
SOURCE_WALL_MARGIN_M = 0.3
MIN_SOURCE_DISTANCE_M = 0.2
# Image order cap: the complete image diamond then spans >= 0.3 s even in the largest default room
# (10 x 8 x 4 m); later than that the decay is 60 dB * 0.3 / RT60 down (>= 22 dB at RT60 0.8 s),
# and the images beyond the cap (up to 10^6 per talker) would dominate the build time.
ISM_MAX_ORDER = 30


@dataclasses.dataclass(frozen=True)
class RirBank:
  """Multichannel responses for rooms x azimuths (the interface scenes.py consumes).

  `R` rooms, `A` azimuths, `L` samples, `M` = len(CHANNEL_NAMES) channels (channels missing from a
  measured set are zeros and absent from `channel_names`).
  """
  sample_rate: int
  channel_names: tuple          # channels that carry data, a subset of CHANNEL_NAMES
  azimuths_deg: np.ndarray      # [A] float32
  room_dims: np.ndarray         # [R, 3] float32 (zeros when unknown)
  rt60: np.ndarray              # [R] float32
  distance_m: np.ndarray        # [R, A] float32 (nan when unknown)
  reverberant: np.ndarray       # [R, A, L, M] float32
  direct: np.ndarray            # [R, A, L, M] float32
  drr_db: np.ndarray            # [R, A, M] float32
  available: np.ndarray         # [R, A] bool

  @property
  def num_rooms(self) -> int:
    return self.reverberant.shape[0]

  @property
  def rir_length(self) -> int:
    return self.reverberant.shape[2]

  _ARRAYS = ("azimuths_deg", "room_dims", "rt60", "distance_m", "reverberant", "direct", "drr_db",
             "available")

  def save(self, directory) -> None:
    """Writes one .npy per array (memory-mappable) and meta.json into `directory`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in self._ARRAYS:
      np.save(directory / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
    meta = dict(sample_rate=self.sample_rate, channel_names=list(self.channel_names))
    (directory / "meta.json.tmp").write_text(json.dumps(meta))
    os.replace(directory / "meta.json.tmp", directory / "meta.json")

  @classmethod
  def load(cls, directory, mmap: bool = True) -> "RirBank":
    """Reads a bank written by `save`; arrays are memory-mapped read-only by default."""
    directory = pathlib.Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None)
              for name in cls._ARRAYS}
    return cls(sample_rate=int(meta["sample_rate"]), channel_names=tuple(meta["channel_names"]),
               **arrays)


def direct_to_reverberant_db(reverberant: np.ndarray, direct: np.ndarray) -> np.ndarray:
  """DRR of RIRs [..., L, M] against their direct parts [..., L, M] -> [..., M] float32."""
  direct_energy = np.sum(np.square(direct, dtype=np.float64), axis=-2)
  reverb_energy = np.sum(np.square(reverberant - direct, dtype=np.float64), axis=-2)
  with np.errstate(divide="ignore"):
    return (10 * np.log10(direct_energy + 1e-20) - 10 * np.log10(reverb_energy + 1e-20)).astype(np.float32)


def render_head_rirs(image_positions: np.ndarray, image_gains: np.ndarray,
                     image_orders: np.ndarray, head_position, head_yaw_rad: float,
                     sample_rate: int, num_samples: int,
                     mic_directions: np.ndarray = MIC_DIRECTIONS,
                     speed_of_sound: float = SPEED_OF_SOUND):
  """Reverberant and direct-path RIRs of a head-worn array from image sources.

  Args:
    image_positions: [N, 3] image source positions (room coordinates, m).
    image_gains: [N] wall damping of each image (1 for the direct path).
    image_orders: [N] reflection order (0 = direct path).
    head_position: [3] head centre; head_yaw_rad: rotation of the head's front (x) axis about z.
    mic_directions: [M, 3] mic unit vectors in head coordinates.
  Returns:
    reverberant [num_samples, M] float32, direct [num_samples, M] float32.
  """
  offsets = np.asarray(image_positions, np.float64) - np.asarray(head_position, np.float64)
  distances = np.linalg.norm(offsets, axis=1)
  delays = distances / speed_of_sound * sample_rate                                # [N] samples
  keep = delays < num_samples - 1
  offsets, distances, delays = offsets[keep], distances[keep], delays[keep]
  gains = np.asarray(image_gains, np.float64)[keep] / (4 * np.pi * distances)
  orders = np.asarray(image_orders)[keep]
  cos_yaw, sin_yaw = np.cos(head_yaw_rad), np.sin(head_yaw_rad)
  world_to_head = np.array([[cos_yaw, sin_yaw, 0.0], [-sin_yaw, cos_yaw, 0.0], [0.0, 0.0, 1.0]])
  directions = (offsets / distances[:, None]) @ world_to_head.T                    # [N, 3]
  cos_incidence = directions @ np.asarray(mic_directions).T                        # [N, M]

  pad = int(np.ceil(0.004 * sample_rate)) + 8
  nfft = sp_fft.next_fast_len(num_samples + pad, real=True)
  table = hrtf_table(sample_rate, nfft)
  frequencies = table.frequencies_hz

  def exact_spectrum(selection):
    phases = np.exp(-2j * np.pi * np.outer(delays[selection] / sample_rate, frequencies))  # [n, F]
    responses = table(cos_incidence[selection])                                    # [n, M, F]
    return np.einsum("i,if,imf->fm", gains[selection], phases, responses)          # [F, M]

  direct_spectrum = exact_spectrum(orders == 0)
  spectrum = direct_spectrum + exact_spectrum((orders > 0) & (orders <= EARLY_MAX_ORDER))

  late = orders > EARLY_MAX_ORDER
  if np.any(late):
    coarse = _coarse_table(sample_rate, nfft)
    num_bins = len(coarse.angles_deg)
    num_mics = cos_incidence.shape[1]
    lower, weight = coarse.bin_weights(cos_incidence[late])                        # [n, M]
    samples = np.rint(delays[late]).astype(np.int64)[:, None]
    base = (np.arange(num_mics)[None, :] * num_bins + lower) * nfft + samples
    late_gains = gains[late][:, None]
    size = num_mics * num_bins * nfft
    trains = (np.bincount(base.ravel(), (late_gains * (1 - weight)).ravel(), size)
              + np.bincount((base + nfft).ravel(), (late_gains * weight).ravel(), size))
    train_spectra = sp_fft.rfft(trains.reshape(num_mics, num_bins, nfft), axis=-1)  # [M, B, F]
    spectrum = spectrum + np.einsum("mbf,bf->fm", train_spectra, coarse.table)

  reverberant = sp_fft.irfft(spectrum, n=nfft, axis=0)[:num_samples]
  direct = sp_fft.irfft(direct_spectrum, n=nfft, axis=0)[:num_samples]
  return reverberant.astype(np.float32), direct.astype(np.float32)


_COARSE_TABLES = {}


def _coarse_table(sample_rate: int, nfft: int) -> SphereHrtfTable:
  key = (sample_rate, nfft)
  if key not in _COARSE_TABLES:
    _COARSE_TABLES[key] = SphereHrtfTable(sample_rate, nfft, LATE_ANGLE_STEP_DEG)
  return _COARSE_TABLES[key]


def azimuth_grid(step_deg: float) -> np.ndarray:
  """The talker azimuth grid over the full circle, [A] float32 in [-180, 180)."""
  if not 0 < step_deg <= 180:
    raise ValueError(f"data.azimuth_step_deg={step_deg} must be in (0, 180]")
  count = int(round(360.0 / step_deg))
  return (np.arange(count) * (360.0 / count) + 180.0) % 360.0 - 180.0


def _sabine_room(rt60: float, dims: np.ndarray, rir_seconds: float):
  """Absorption and image order for a target RT60 (raised to the room's shortest feasible one)."""
  volume = np.prod(dims)
  surface = 2 * (dims[0] * dims[1] + dims[0] * dims[2] + dims[1] * dims[2])
  shortest = 24 * np.log(10) * volume / (SPEED_OF_SOUND * surface * 0.99)
  rt60 = max(rt60, shortest)
  absorption, max_order = pra.inverse_sabine(rt60, dims, c=SPEED_OF_SOUND)
  _, order_for_length = pra.inverse_sabine(min(rt60, rir_seconds), dims, c=SPEED_OF_SOUND)
  return rt60, absorption, int(min(max_order, order_for_length, ISM_MAX_ORDER))


def simulate_room(room_index: int, seed: int, sample_rate: int, num_samples: int,
                  room_size_min, room_size_max, rt60_range, distance_range,
                  azimuths_deg: np.ndarray) -> dict:
  """One random shoebox room with the head inside and a talker at every grid azimuth.

  Returns a dict of room_dims [3], rt60 [], distance_m [A], reverberant/direct [A, L, M],
  drr_db [A, M], all float32.
  """
  rng = np.random.default_rng([seed, room_index])
  dims = rng.uniform(room_size_min, room_size_max)
  rt60_target, absorption, max_order = _sabine_room(
      rng.uniform(*rt60_range), dims, num_samples / sample_rate)
  head = np.array([rng.uniform(WALL_MARGIN_M, dims[0] - WALL_MARGIN_M),
                   rng.uniform(WALL_MARGIN_M, dims[1] - WALL_MARGIN_M),
                   np.clip(rng.uniform(1.1, 1.7), WALL_MARGIN_M, dims[2] - WALL_MARGIN_M)])
  yaw = rng.uniform(-np.pi, np.pi)
  world_angles = yaw + np.deg2rad(azimuths_deg)
  directions = np.stack([np.cos(world_angles), np.sin(world_angles)], axis=1)     # [A, 2]
  with np.errstate(divide="ignore"):
    to_wall = np.where(directions > 0, (dims[:2] - SOURCE_WALL_MARGIN_M - head[:2]) / directions,
                       (SOURCE_WALL_MARGIN_M - head[:2]) / directions)
  room_limit = np.min(np.where(np.abs(directions) > 1e-12, to_wall, np.inf), axis=1)
  distances = np.maximum(np.minimum(rng.uniform(*distance_range, size=len(azimuths_deg)),
                                    room_limit), MIN_SOURCE_DISTANCE_M)
  room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption),
                     max_order=max_order, air_absorption=False, use_rand_ism=False)
  for direction, distance in zip(directions, distances):
    room.add_source([*(head[:2] + distance * direction), head[2]])
  room.add_microphone(head)
  room.image_source_model()
  reverberant, direct = [], []
  for source, visibility in zip(room.sources, room.visibility):
    gains = source.damping[0] * visibility[0]
    rir, rir_direct = render_head_rirs(source.images.T, gains, source.orders, head, yaw,
                                       sample_rate, num_samples)
    reverberant.append(rir)
    direct.append(rir_direct)
  reverberant, direct = np.stack(reverberant), np.stack(direct)
  return dict(room_dims=dims.astype(np.float32),
              rt60=np.float32(measured_rt60(reverberant[:, :, 0], sample_rate, rt60_target)),
              distance_m=distances.astype(np.float32), reverberant=reverberant, direct=direct,
              drr_db=direct_to_reverberant_db(reverberant, direct))


def measured_rt60(rirs: np.ndarray, sample_rate: int, fallback: float) -> float:
  """Median T20-extrapolated RT60 of RIRs [K, L] (pyroomacoustics' Schroeder fit); `fallback`
  when the decay is too short to fit."""
  values = []
  for rir in rirs:
    try:
      value = measure_rt60(np.asarray(rir, np.float64), fs=sample_rate, decay_db=20)
    except (ValueError, IndexError):
      continue
    if np.isfinite(value) and value > 0:
      values.append(value)
  return float(np.median(values)) if values else float(fallback)


def bank_key(config) -> str:
  """Hash of every config field that shapes the simulated bank, plus BANK_VERSION."""
  data = config.data
  fields = dict(version=BANK_VERSION, seed=int(config.seed), sample_rate=int(data.sample_rate),
                room_size_min=list(map(float, data.room_size_min)),
                room_size_max=list(map(float, data.room_size_max)),
                rt60_range=list(map(float, data.rt60_range)),
                azimuth_step_deg=float(data.azimuth_step_deg),
                distance_range=list(map(float, data.distance_range)),
                rir_length_seconds=float(data.rir_length_seconds), num_rooms=int(data.num_rooms),
                mics=np.round(MIC_DIRECTIONS, 6).tolist())
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _simulate_room_star(arguments):
  return simulate_room(*arguments)


def build_rir_bank(config, cache_dir=None, num_workers: int = 0, progress: bool = True) -> RirBank:
  """The simulated bank for `config` (data.num_rooms rooms x the azimuth grid), from the cache
  `<cache_dir>/rir_bank/<bank_key>/` when present, otherwise simulated with a process pool
  (`num_workers` processes; 0 = os.cpu_count(), 1 = in this process) and cached."""
  data = config.data
  if data.num_rooms < 1:
    raise ValueError(f"data.num_rooms={data.num_rooms} must be >= 1")
  if np.any(np.asarray(data.room_size_min) < 2 * WALL_MARGIN_M + 0.1) or np.any(
      np.asarray(data.room_size_max) < np.asarray(data.room_size_min)):
    raise ValueError("data.room_size_min must be >= 1.1 m per side and <= data.room_size_max")
  cache_dir = pathlib.Path(cache_dir or data.cache_dir or "./.cache")
  directory = cache_dir / "rir_bank" / bank_key(config)
  if (directory / "meta.json").exists():
    return RirBank.load(directory)
  sample_rate = int(data.sample_rate)
  num_samples = int(round(data.rir_length_seconds * sample_rate))
  azimuths = azimuth_grid(data.azimuth_step_deg)
  tasks = [(index, int(config.seed), sample_rate, num_samples, tuple(data.room_size_min),
            tuple(data.room_size_max), tuple(data.rt60_range), tuple(data.distance_range), azimuths)
           for index in range(data.num_rooms)]
  num_workers = min(num_workers or os.cpu_count() or 1, len(tasks))
  bar = dict(total=len(tasks), desc="RIR bank (rooms)", disable=not progress)
  if num_workers == 1:
    rooms = [simulate_room(*task) for task in tqdm.tqdm(tasks, **bar)]
  else:
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      rooms = list(tqdm.tqdm(pool.imap(_simulate_room_star, tasks), **bar))
  bank = RirBank(
      sample_rate=sample_rate, channel_names=CHANNEL_NAMES,
      azimuths_deg=azimuths.astype(np.float32),
      room_dims=np.stack([room["room_dims"] for room in rooms]),
      rt60=np.array([room["rt60"] for room in rooms], np.float32),
      distance_m=np.stack([room["distance_m"] for room in rooms]),
      reverberant=np.stack([room["reverberant"] for room in rooms]),
      direct=np.stack([room["direct"] for room in rooms]),
      drr_db=np.stack([room["drr_db"] for room in rooms]),
      available=np.ones((len(rooms), len(azimuths)), bool))
  staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
  bank.save(staging)
  try:
    os.replace(staging, directory)
  except OSError:  # another process cached the same bank first
    shutil.rmtree(staging, ignore_errors=True)
  return RirBank.load(directory)
