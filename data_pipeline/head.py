"""Rigid-sphere head-related transfer function (far field).

The pressure on the surface of a rigid sphere of radius a for a plane wave (Rayleigh's series, as in
Duda & Martens 1998), normalised by the free-field pressure at the sphere centre:

  H(f, theta) = sum_n (2n + 1) j^n (-j / (ka)^2) / h2_n'(ka) P_n(cos theta)

with k = 2 pi f / c, theta the angle between the source direction and the microphone direction,
h2_n = j_n - j y_n the spherical Hankel function of the second kind (the e^{+j w t} time convention
used with numpy's FFT: a delay tau is exp(-j w tau)). H -> 1 at DC; on the side facing the source
it approaches 2 exp(+j k a) (pressure doubling, arrival a/c before the centre).
"""

import functools

import numpy as np
from scipy import special

from data_pipeline.array import HEAD_RADIUS_M, unit_vectors

SPEED_OF_SOUND = 343.0


def sphere_hrtf(frequencies_hz, cos_incidence, radius: float = HEAD_RADIUS_M,
                speed_of_sound: float = SPEED_OF_SOUND) -> np.ndarray:
  """Far-field rigid-sphere HRTF.

  Args:
    frequencies_hz: [F] non-negative frequencies.
    cos_incidence: [K] cosine of the angle between source direction and microphone direction.
  Returns:
    [F, K] complex128 transfer functions, referenced to the free field at the head centre.
  """
  frequencies = np.atleast_1d(np.asarray(frequencies_hz, dtype=np.float64))
  cosines = np.clip(np.atleast_1d(np.asarray(cos_incidence, dtype=np.float64)), -1.0, 1.0)
  if np.any(frequencies < 0):
    raise ValueError("sphere_hrtf needs non-negative frequencies; pass np.fft.rfftfreq values")
  ka = 2 * np.pi * frequencies * radius / speed_of_sound
  num_orders = int(np.ceil(ka.max(initial=0.0) * 1.5)) + 20
  orders = np.arange(num_orders)
  legendre = special.eval_legendre(orders[:, None], cosines[None, :])          # [N, K]
  response = np.ones((frequencies.size, cosines.size), dtype=np.complex128)
  positive = ka > 0
  x = ka[positive][:, None]                                                    # [F+, 1]
  with np.errstate(all="ignore"):
    djn = special.spherical_jn(orders[None, :], x, derivative=True)
    dyn = special.spherical_yn(orders[None, :], x, derivative=True)
    coefficients = (2 * orders + 1) * (1j ** orders) * (-1j / x ** 2) / (djn - 1j * dyn)
  # High orders at low ka overflow y_n'; their true contribution is ~0.
  coefficients = np.where(np.isfinite(dyn), coefficients, 0.0)
  response[positive] = coefficients @ legendre
  return response


class SphereHrtfTable:
  """The sphere HRTF precomputed on an angle grid for the rfft bins of one FFT size.

  `table[k, f]` is H at angle `angles_deg[k]` (0..180) and frequency `frequencies_hz[f]`;
  `__call__` interpolates linearly in angle.
  """

  def __init__(self, sample_rate: int, nfft: int, angle_step_deg: float = 0.5,
               radius: float = HEAD_RADIUS_M, speed_of_sound: float = SPEED_OF_SOUND):
    num_angles = int(round(180.0 / angle_step_deg)) + 1
    self.angle_step_deg = 180.0 / (num_angles - 1)
    self.angles_deg = np.linspace(0.0, 180.0, num_angles)
    self.frequencies_hz = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    self.table = sphere_hrtf(self.frequencies_hz, np.cos(np.deg2rad(self.angles_deg)),
                             radius, speed_of_sound).T.astype(np.complex64)    # [K, F]

  def bin_weights(self, cos_incidence):
    """Lower grid index and the upper neighbour's linear weight; shapes [...] -> [...], [...]."""
    angle = np.rad2deg(np.arccos(np.clip(cos_incidence, -1.0, 1.0))) / self.angle_step_deg
    lower = np.minimum(np.floor(angle).astype(np.int64), len(self.angles_deg) - 2)
    return lower, angle - lower

  def __call__(self, cos_incidence) -> np.ndarray:
    """HRTF at the given incidence cosines: [...] -> [..., F] complex64."""
    lower, weight = self.bin_weights(cos_incidence)
    weight = weight[..., None].astype(np.float32)
    return (1 - weight) * self.table[lower] + weight * self.table[lower + 1]


@functools.lru_cache(maxsize=8)
def hrtf_table(sample_rate: int, nfft: int, angle_step_deg: float = 0.5) -> SphereHrtfTable:
  """A cached `SphereHrtfTable` (one per process and FFT size)."""
  return SphereHrtfTable(sample_rate, nfft, angle_step_deg)


def anechoic_head_rirs(azimuth_deg: float, sample_rate: int, num_samples: int,
                       mic_directions: np.ndarray, elevation_deg: float = 0.0,
                       delay_samples: float = 0.0) -> np.ndarray:
  """Plane-wave head impulse responses of every mic, [num_samples, M] float32.

  The response is delayed by `delay_samples` (to keep the acausal part of the ipsilateral mics
  inside the window) and referenced to the free field at the head centre.
  """
  table = hrtf_table(sample_rate, num_samples)
  cosines = mic_directions @ unit_vectors(azimuth_deg, elevation_deg)             # [M]
  spectra = table(cosines) * np.exp(-2j * np.pi * table.frequencies_hz * delay_samples / sample_rate)
  return np.fft.irfft(spectra, n=num_samples, axis=-1).T.astype(np.float32)
