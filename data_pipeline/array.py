"""The head-worn cochlear-implant microphone array.

Six microphones on a rigid-sphere head of radius `HEAD_RADIUS_M`, per ear a behind-the-ear (BTE)
front and back microphone and a T-mic at the ear-canal entrance.

Coordinates are head-centred: x to the front, y to the left, z up. Azimuth 0 deg = front,
+90 deg = left, 180 deg = back, -90 deg = right (counter-clockwise seen from above); elevation
positive upwards. Chosen positions (left ear; the right ear mirrors the azimuth):

  * T-mic: azimuth 100 deg, elevation -10 deg (the ear-canal entrance);
  * BTE front: azimuth 103 deg, elevation 25 deg (on top of the pinna);
  * BTE back: azimuth 110 deg, elevation 23 deg.

The T-mics sit 10 deg behind the interaural axis as in Duda & Martens' sphere model, and 10 deg
below the sphere's equator (the canal lies below the centre of the sphere fitted to a head).
Exactly at +-90 deg a rigid sphere focuses a "bright spot" on the far ear, which caps the
interaural level difference of a lateral talker near 5 dB at 4 kHz; with this offset it is
~12 dB, close to measured heads. The BTE pair is about 6.7 deg of arc apart, i.e. ~1.0 cm on the
8.75 cm sphere, close to the port spacing of CI sound processors.
"""

import numpy as np

CHANNEL_NAMES = ("L_front", "L_back", "L_tmic", "R_front", "R_back", "R_tmic")
HEAD_RADIUS_M = 0.0875

# (azimuth_deg, elevation_deg) per channel, in CHANNEL_NAMES order.
MIC_AZIMUTH_ELEVATION_DEG = (
    (103.0, 25.0),
    (110.0, 23.0),
    (100.0, -10.0),
    (-103.0, 25.0),
    (-110.0, 23.0),
    (-100.0, -10.0),
)


def unit_vectors(azimuth_deg, elevation_deg=0.0) -> np.ndarray:
  """Unit direction vectors in head coordinates; broadcast shapes [...] -> [..., 3]."""
  azimuth = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64))
  elevation = np.deg2rad(np.asarray(elevation_deg, dtype=np.float64))
  azimuth, elevation = np.broadcast_arrays(azimuth, elevation)
  return np.stack([np.cos(elevation) * np.cos(azimuth),
                   np.cos(elevation) * np.sin(azimuth),
                   np.sin(elevation)], axis=-1)


MIC_DIRECTIONS = unit_vectors(*np.asarray(MIC_AZIMUTH_ELEVATION_DEG).T)  # [6, 3]
MIC_POSITIONS_M = HEAD_RADIUS_M * MIC_DIRECTIONS                        # [6, 3]


def channel_indices(names) -> list[int]:
  """Indices into CHANNEL_NAMES of the given channel names (a string or a sequence of them)."""
  if isinstance(names, str):
    names = (names,)
  indices = []
  for name in names:
    if name not in CHANNEL_NAMES:
      raise ValueError(f"channel {name!r} is not in the array; use one of {', '.join(CHANNEL_NAMES)}")
    indices.append(CHANNEL_NAMES.index(name))
  return indices


def target_mics(data) -> tuple[str, ...]:
  """The mics at which targets are stored: config.data.target_mics, or (data.reference_mic,)
  when it is empty."""
  names = tuple(data.get("target_mics", ()) or (data.reference_mic,))
  channel_indices(names)
  if len(set(names)) != len(names):
    raise ValueError(f"data.target_mics={names} lists a mic twice; list each mic once")
  return names
