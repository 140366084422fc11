"""User-supplied measured responses (BRIR folders and SOFA files) as a `RirBank`.

Accepted inputs (`data.measured_dir`):

  * a folder of wav files named `<room>_az<deg>.wav` (e.g. `office_az-45.wav`, `hall_az90.5.wav`;
    azimuth convention of `data_pipeline.array`: 0 front, +90 left), each with the 6 array
    channels in CHANNEL_NAMES order, or with the channels listed in a sidecar `channels.json`
    (`{"channels": ["L_tmic", "R_tmic"]}`) in the folder. Optional `anechoic_az<deg>.wav` files
    (same channels) are the direct-path responses for that azimuth in every room. An optional
    `"distance_m"` number in `channels.json` gives the talker distance;
  * a `.sofa` file (one room) or a folder of them (read with h5py: `Data.IR` [measurements,
    receivers, samples], `SourcePosition` spherical (deg, deg, m) or cartesian, `Data.SamplingRate`);
    receivers as above, a subset named by a `<file>.json` sidecar. Per azimuth the measurement
    closest to elevation 0 is used.

Responses are resampled to the configured rate (scipy.signal.resample_poly) and padded/truncated
to `data.rir_length_seconds`. Without anechoic responses the direct path is the response within
+-2.5 ms of its main peak (the window also used for the direct-to-reverberant ratio).

Each room name (wav prefix or SOFA file) is one bank room, so the train/val/test splits get
disjoint measured rooms like simulated ones (`scenes.split_rooms`). Fewer than 3 rooms (e.g. one
SOFA file) cannot be split that way: rendering stops with a one-line error unless
`data.share_rooms_across_splits=True`, with which every split uses every measured response (the
test scores are then on responses seen in training).
"""

import fractions
import json
import pathlib
import re

import h5py
import numpy as np
import soundfile
from scipy import signal

from data_pipeline.array import CHANNEL_NAMES, channel_indices
from data_pipeline.rooms import RirBank, direct_to_reverberant_db, measured_rt60

BRIR_PATTERN = re.compile(r"^(?P<room>.+)_az(?P<azimuth>[-+]?\d+(?:\.\d+)?)\.wav$", re.IGNORECASE)
DIRECT_WINDOW_S = 0.0025
MAX_RESAMPLE_FACTOR = 1000


def resample(responses: np.ndarray, source_rate: float, target_rate: int, what: str) -> np.ndarray:
  """Resamples [N, C] responses along axis 0 by a rational factor."""
  if source_rate == target_rate:
    return responses
  ratio = fractions.Fraction(str(float(source_rate))) / target_rate
  ratio = 1 / ratio
  if ratio.numerator > MAX_RESAMPLE_FACTOR or ratio.denominator > MAX_RESAMPLE_FACTOR:
    raise ValueError(f"{what}: sample rate {source_rate} Hz cannot be resampled to {target_rate} Hz "
                     f"by a small rational factor; resample the file to {target_rate} Hz first")
  return signal.resample_poly(responses, ratio.numerator, ratio.denominator, axis=0)


def fit_length(responses: np.ndarray, length: int) -> np.ndarray:
  """Pads with zeros or truncates [N, C] responses to [length, C]."""
  if responses.shape[0] >= length:
    return responses[:length]
  return np.pad(responses, ((0, length - responses.shape[0]), (0, 0)))


def to_array_channels(responses: np.ndarray, names, what: str) -> np.ndarray:
  """[N, C] responses of the named channels -> [N, 6] with zeros in the absent channels."""
  if responses.shape[1] != len(names):
    raise ValueError(f"{what}: has {responses.shape[1]} channels but {len(names)} are expected "
                     f"({', '.join(names)}); name the channels in a json sidecar "
                     '({"channels": [...]})')
  full = np.zeros((responses.shape[0], len(CHANNEL_NAMES)), np.float32)
  full[:, channel_indices(names)] = responses
  return full


def direct_window(responses: np.ndarray, sample_rate: int) -> np.ndarray:
  """The part of [N, M] responses within DIRECT_WINDOW_S of each channel's main peak."""
  half = int(round(DIRECT_WINDOW_S * sample_rate))
  peaks = np.argmax(np.abs(responses), axis=0)
  times = np.arange(responses.shape[0])[:, None]
  return np.where(np.abs(times - peaks[None, :]) <= half, responses, 0.0).astype(np.float32)


def _wrap_azimuth(azimuth: float) -> float:
  return float((azimuth + 180.0) % 360.0 - 180.0)


def _read_sidecar(path: pathlib.Path):
  if not path.exists():
    return CHANNEL_NAMES, float("nan")
  sidecar = json.loads(path.read_text())
  names = tuple(sidecar.get("channels", CHANNEL_NAMES))
  channel_indices(names)
  return names, float(sidecar.get("distance_m", float("nan")))


def _read_wav(path: pathlib.Path, names, sample_rate: int, length: int) -> np.ndarray:
  responses, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
  if not np.all(np.isfinite(responses)):
    raise ValueError(f"{path}: response with NaN/inf samples; remove or repair it")
  responses = resample(responses, file_rate, sample_rate, str(path))
  return fit_length(to_array_channels(responses, names, str(path)), length)


def _read_sofa(path: pathlib.Path, sample_rate: int, length: int):
  """-> {azimuth: [length, 6]} for the measurements nearest elevation 0, and the channel names."""
  names, _ = _read_sidecar(path.with_suffix(".json"))
  with h5py.File(path, "r") as sofa:
    for key in ("Data.IR", "SourcePosition", "Data.SamplingRate"):
      if key not in sofa:
        raise ValueError(f"{path}: no {key} in the SOFA file; export a SimpleFreeFieldHRIR or "
                         "SingleRoomDRIR convention file")
    impulse = np.asarray(sofa["Data.IR"], np.float32)                              # [Me, R, N]
    if not np.all(np.isfinite(impulse)):
      raise ValueError(f"{path}: Data.IR holds NaN/inf samples; remove or repair the file")
    positions = np.asarray(sofa["SourcePosition"], np.float64).reshape(-1, 3)
    position_type = sofa["SourcePosition"].attrs.get("Type", b"spherical")
    file_rate = float(np.asarray(sofa["Data.SamplingRate"]).ravel()[0])
  if isinstance(position_type, bytes):
    position_type = position_type.decode()
  positions = np.broadcast_to(positions, (impulse.shape[0], 3))
  if str(position_type).lower().startswith("cart"):
    azimuths = np.rad2deg(np.arctan2(positions[:, 1], positions[:, 0]))
    elevations = np.rad2deg(np.arctan2(positions[:, 2], np.hypot(positions[:, 0], positions[:, 1])))
    distances = np.linalg.norm(positions, axis=1)
  else:
    azimuths, elevations, distances = positions.T
  best = {}
  for index, (azimuth, elevation) in enumerate(zip(azimuths, elevations)):
    azimuth = round(_wrap_azimuth(azimuth), 3)
    if azimuth not in best or abs(elevation) < abs(elevations[best[azimuth]]):
      best[azimuth] = index
  responses = {}
  for azimuth, index in best.items():
    measurement = resample(impulse[index].T, file_rate, sample_rate, str(path))
    responses[azimuth] = (fit_length(to_array_channels(measurement, names, str(path)), length),
                          float(distances[index]))
  return responses, names


def load_measured_bank(path, sample_rate: int, rir_length_seconds: float) -> RirBank:
  """A `RirBank` from a BRIR folder, a SOFA file or a folder of SOFA files (see module doc)."""
  path = pathlib.Path(path)
  length = int(round(rir_length_seconds * sample_rate))
  if not str(path) or not path.exists():
    raise ValueError(f"data.measured_dir={str(path)!r} does not exist; point it at a BRIR folder "
                     "or a .sofa file")
  rooms, direct_by_azimuth, distance_by_room = {}, {}, {}
  sofa_files = [path] if path.is_file() else sorted(path.glob("*.sofa"))
  if path.is_file() and path.suffix.lower() != ".sofa":
    raise ValueError(f"{path} is neither a folder nor a .sofa file; point data.measured_dir at one")
  if sofa_files:
    names = None
    for sofa_file in sofa_files:
      responses, file_names = _read_sofa(sofa_file, sample_rate, length)
      names = file_names if names is None else tuple(n for n in names if n in file_names)
      rooms[sofa_file.stem] = {azimuth: rir for azimuth, (rir, _) in responses.items()}
      distance_by_room[sofa_file.stem] = {azimuth: d for azimuth, (_, d) in responses.items()}
  else:
    names, distance = _read_sidecar(path / "channels.json")
    for wav in sorted(path.glob("*.wav")):
      match = BRIR_PATTERN.match(wav.name)
      if match is None:
        continue
      azimuth = round(_wrap_azimuth(float(match["azimuth"])), 3)
      responses = _read_wav(wav, names, sample_rate, length)
      if match["room"].lower() == "anechoic":
        direct_by_azimuth[azimuth] = responses
      else:
        rooms.setdefault(match["room"], {})[azimuth] = responses
        distance_by_room.setdefault(match["room"], {})[azimuth] = distance
  if not rooms:
    raise ValueError(f"{path}: no responses found; name BRIR files <room>_az<deg>.wav or give "
                     ".sofa files")
  room_names = sorted(rooms)
  azimuths = sorted({azimuth for room in rooms.values() for azimuth in room})
  shape = (len(room_names), len(azimuths), length, len(CHANNEL_NAMES))
  reverberant, direct = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
  drr_db = np.zeros(shape[:2] + shape[3:], np.float32)
  available = np.zeros(shape[:2], bool)
  distances = np.full(shape[:2], np.nan, np.float32)
  rt60 = np.zeros(len(room_names), np.float32)
  used = channel_indices(names)
  for r, room in enumerate(room_names):
    for a, azimuth in enumerate(azimuths):
      if azimuth not in rooms[room]:
        continue
      rir = rooms[room][azimuth]
      reverberant[r, a] = rir
      windowed = direct_window(rir, sample_rate)
      direct[r, a] = direct_by_azimuth.get(azimuth, windowed)
      drr_db[r, a] = direct_to_reverberant_db(rir, windowed)
      available[r, a] = True
      distances[r, a] = distance_by_room[room][azimuth]
    rt60[r] = measured_rt60(reverberant[r][available[r]][:, :, used[0]], sample_rate, np.nan)
  return RirBank(sample_rate=sample_rate, channel_names=tuple(names),
                 azimuths_deg=np.asarray(azimuths, np.float32),
                 room_dims=np.zeros((len(room_names), 3), np.float32), rt60=rt60,
                 distance_m=distances, reverberant=reverberant, direct=direct, drr_db=drr_db,
                 available=available)
