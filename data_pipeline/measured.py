"""User-supplied measured responses (BRIR folders and SOFA files) as a `RirBank`.

Accepted inputs (`data.measured_dir`):

  * a folder of wav files named `<room>_az<deg>.wav` (e.g. `office_az-45.wav`, `hall_az90.5.wav`;
    azimuth convention of `data_pipeline.array`: 0 front, +90 left), each with the 6 array
    channels in CHANNEL_NAMES order, or with the channels listed in a sidecar `channels.json`
    (`{"channels": ["L_tmic", "R_tmic"]}`) in the folder. Optional `anechoic_az<deg>.wav` files
    (same channels) are the direct-path responses for that azimuth in every room. An optional
    `"distance_m"` number in `channels.json` gives the talker distance;
  * a `.sofa` file (one room) or a folder of them, read and checked against its convention by
    `sofar` (the `sofa` extra). Impulse-response conventions are accepted (DataType FIR:
    SimpleFreeFieldHRIR, GeneralFIR, SingleRoomSRIR; FIR-E / FIRE, every emitter a source:
    SingleRoomMIMOSRIR, GeneralFIR-E, FreeFieldHRIR, MultiSpeakerBRIR). Each response is delayed
    by its `Data.Delay`, resampled from its own `Data.SamplingRate` (per file or per
    measurement), and placed at the source's direction in the listener's head frame
    (`ListenerPosition`, `ListenerView`, `ListenerUp` per measurement; emitters at
    `EmitterPosition` in the source's frame). Receivers are the 6 array channels in
    CHANNEL_NAMES order, or a subset named by a `<file>.json` sidecar as above. Per azimuth
    the measurement closest to elevation 0 is used.

Responses are resampled to the configured rate (`corpus_base.resample`) and padded/truncated
to `data.rir_length_seconds`. Without anechoic responses the direct path is the response within
+-2.5 ms of its main peak (the window also used for the direct-to-reverberant ratio).

Each room name (wav prefix or SOFA file) is one bank room, so the train/val/test splits get
disjoint measured rooms like simulated ones (`scenes.split_rooms`). Fewer than 3 rooms (e.g. one
SOFA file) cannot be split that way: rendering stops with a one-line error unless
`data.share_rooms_across_splits=True`, with which every split uses every measured response (the
test scores are then on responses seen in training).
"""

import json
import pathlib
import re

import numpy as np
import soundfile

from data_pipeline import corpus_base
from data_pipeline.array import CHANNEL_NAMES, channel_indices
from data_pipeline.rooms import RirBank, direct_to_reverberant_db, measured_rt60

BRIR_PATTERN = re.compile(r"^(?P<room>.+)_az(?P<azimuth>[-+]?\d+(?:\.\d+)?)\.wav$", re.IGNORECASE)
DIRECT_WINDOW_S = 0.0025


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
  responses = corpus_base.resample(responses, file_rate, sample_rate, what=str(path))
  return fit_length(to_array_channels(responses, names, str(path)), length)


SOFA_DATA_TYPES = ("FIR", "FIR-E", "FIRE")
SOFA_CONVENTIONS = ("SimpleFreeFieldHRIR", "GeneralFIR", "SingleRoomSRIR", "SingleRoomMIMOSRIR",
                    "GeneralFIR-E", "FreeFieldHRIR", "MultiSpeakerBRIR", "GeneralFIRE")


def _cartesian(values: np.ndarray, kind: str, what: str) -> np.ndarray:
  """[..., 3] SOFA coordinates of `kind` ('cartesian' metres, or 'spherical' degrees, degrees,
  metres) -> cartesian."""
  kind = str(kind).lower()
  if kind.startswith("cart"):
    return values
  if kind != "spherical":
    raise ValueError(f"{what}: coordinate type {kind!r} is not supported; store it as "
                     "cartesian or spherical")
  azimuth, elevation, radius = np.deg2rad(values[..., 0]), np.deg2rad(values[..., 1]), values[..., 2]
  return np.stack([radius * np.cos(elevation) * np.cos(azimuth),
                   radius * np.cos(elevation) * np.sin(azimuth), radius * np.sin(elevation)], -1)


def _frames(view: np.ndarray, up: np.ndarray) -> np.ndarray:
  """[M, 3, 3] rotations whose rows are the local x (view), y (left) and z (up) axes."""
  x = view / np.linalg.norm(view, axis=-1, keepdims=True)
  z = up - np.sum(up * x, axis=-1, keepdims=True) * x
  z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  return np.stack([x, np.cross(z, x), z], axis=-2)


def _per_measurement(sofa, name: str, count: int, default) -> np.ndarray:
  """A [I or M, 3] SOFA variable (cartesian) broadcast to [M, 3]."""
  if not hasattr(sofa, name):
    return np.broadcast_to(np.asarray(default, np.float64), (count, 3))
  values = np.asarray(getattr(sofa, name), np.float64).reshape(-1, 3)
  values = _cartesian(values, getattr(sofa, f"{name}_Type", "cartesian"), name)
  return np.broadcast_to(values, (count, 3))


def _read_sofa(path: pathlib.Path, sample_rate: int, length: int):
  """-> {azimuth: ([length, 6], distance)} for the responses nearest elevation 0 in the
  listener's head frame, and the channel names."""
  from spatialsep_jax import extras
  sofar = extras.require("sofar", "sofa", "reading SOFA files")
  names, _ = _read_sidecar(path.with_suffix(".json"))
  try:
    sofa = sofar.read_sofa(str(path), verify=True, verbose=False)
  except (ValueError, KeyError, OSError, TypeError) as error:
    detail = " ".join(str(error).split())[:240]
    raise ValueError(f"{path}: not a valid SOFA file ({detail}); export it with a SOFA "
                     "writer (e.g. sofar) in one of its conventions") from None
  convention = str(sofa.GLOBAL_SOFAConventions)
  data_type = str(sofa.GLOBAL_DataType)
  if data_type not in SOFA_DATA_TYPES or convention == "SimpleHeadphoneIR":
    raise ValueError(f"{path}: SOFA convention {convention} (DataType {data_type}) holds no "
                     f"impulse responses by source position; export one of "
                     f"{', '.join(SOFA_CONVENTIONS)}")
  impulse = np.asarray(sofa.Data_IR, np.float64)
  if data_type == "FIR":                                   # [M, R, N] -> [M, R, 1, N]
    impulse = impulse.reshape(impulse.shape[0], -1, 1, impulse.shape[-1])
  elif data_type == "FIR-E":                               # [M, R, N, E] -> [M, R, E, N]
    impulse = np.moveaxis(impulse, -1, 2)
  measurements, receivers, emitters, _ = impulse.shape
  if not np.all(np.isfinite(impulse)):
    raise ValueError(f"{path}: Data.IR holds NaN/inf samples; remove or repair the file")
  rates = np.broadcast_to(np.asarray(sofa.Data_SamplingRate, np.float64).reshape(-1),
                          (measurements,))
  delay = np.asarray(getattr(sofa, "Data_Delay", 0.0), np.float64)   # [I or M, R(, E)] samples
  delays = np.broadcast_to(delay[:, :, None] if delay.ndim == 2 else delay,
                           (measurements, receivers, emitters))
  if np.any(np.abs(delays - np.round(delays)) > 1e-6) or np.any(delays < 0):
    raise ValueError(f"{path}: Data.Delay holds fractional or negative sample delays; store "
                     "them as whole samples (or inside Data.IR)")
  listener = _per_measurement(sofa, "ListenerPosition", measurements, (0, 0, 0))
  head = _frames(_per_measurement(sofa, "ListenerView", measurements, (1, 0, 0)),
                 _per_measurement(sofa, "ListenerUp", measurements, (0, 0, 1)))
  source = _per_measurement(sofa, "SourcePosition", measurements, (1, 0, 0))
  source_frame = _frames(_per_measurement(sofa, "SourceView", measurements, (1, 0, 0)),
                         _per_measurement(sofa, "SourceUp", measurements, (0, 0, 1)))
  emitter_local = np.zeros((emitters, measurements, 3))  # FIR: responses of the source itself
  if data_type != "FIR":
    offsets = np.asarray(sofa.EmitterPosition, np.float64).reshape(emitters, 3, -1)  # [E, C, I|M]
    offsets = _cartesian(np.moveaxis(offsets, 1, -1), sofa.EmitterPosition_Type, "EmitterPosition")
    emitter_local = np.broadcast_to(offsets, (emitters, measurements, 3))
  # Emitter e of measurement m: its offset in the source's frame, then the vector from the
  # listener in the listener's head frame.
  emitter_global = source[None] + np.einsum("mij,emi->emj", source_frame, emitter_local)
  local = np.einsum("mij,emj->emi", head, emitter_global - listener[None])       # [E, M, 3]
  azimuths = np.rad2deg(np.arctan2(local[..., 1], local[..., 0]))
  elevations = np.rad2deg(np.arctan2(local[..., 2], np.hypot(local[..., 0], local[..., 1])))
  distances = np.linalg.norm(local, axis=-1)
  best = {}
  for e in range(emitters):
    for m in range(measurements):
      azimuth = round(_wrap_azimuth(azimuths[e, m]), 3)
      if azimuth not in best or abs(elevations[e, m]) < abs(elevations[best[azimuth]]):
        best[azimuth] = (e, m)
  responses = {}
  for azimuth, (e, m) in best.items():
    shift = np.round(delays[m, :, e]).astype(int)
    delayed = np.zeros((receivers, impulse.shape[-1] + int(shift.max())), np.float32)
    for r in range(receivers):
      delayed[r, shift[r]:shift[r] + impulse.shape[-1]] = impulse[m, r, e]
    measurement = corpus_base.resample(delayed.T, rates[m], sample_rate, what=str(path))
    responses[azimuth] = (fit_length(to_array_channels(measurement, names, str(path)), length),
                          float(distances[e, m]))
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
