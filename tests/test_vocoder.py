import numpy as np
import pytest
import scipy.signal

from spatialsep_jax import vocoder

RATE = 8000


def test_greenwood_edges_span_range_and_widen_with_frequency():
  edges = vocoder.greenwood_band_edges(16, 250.0, 3800.0)
  assert edges.shape == (17,)
  np.testing.assert_allclose(edges[[0, -1]], [250.0, 3800.0])
  assert np.all(np.diff(np.diff(edges)) > 0)
  assert vocoder.default_high_hz(RATE) == pytest.approx(3800.0)
  assert vocoder.default_high_hz(48000) == 8000.0


@pytest.mark.parametrize("carrier", ["noise", "sine"])
def test_output_energy_stays_inside_the_vocoder_band(carrier):
  x = np.random.default_rng(0).standard_normal(RATE)
  y = vocoder.vocode(x, RATE, num_channels=8, low_hz=300.0, high_hz=3000.0, carrier=carrier)
  frequencies, power = scipy.signal.welch(y, fs=RATE, nperseg=512)
  inside = (frequencies >= 250.0) & (frequencies <= 3200.0)
  assert power[inside].sum() / power.sum() > 0.98
  # Each band is scaled to its analysis band's RMS: overall level is preserved roughly.
  assert 0.5 < np.std(y) / np.std(x[None]) < 1.5


def test_envelope_of_a_tone_burst_follows_the_burst():
  t = np.arange(RATE) / RATE
  burst = (t >= 0.3) & (t < 0.6)
  x = np.sin(2 * np.pi * 1000 * t) * burst
  y = vocoder.vocode(x, RATE)
  frame = int(0.02 * RATE)
  frame_rms = np.sqrt(np.mean(y[:RATE // frame * frame].reshape(-1, frame)**2, axis=-1))
  frame_time = (np.arange(frame_rms.size) + 0.5) * frame / RATE
  on = frame_rms[(frame_time > 0.34) & (frame_time < 0.56)]
  off = frame_rms[(frame_time < 0.25) | (frame_time > 0.65)]
  assert 20 * np.log10(on.min() / off.max()) > 20.0


def test_deterministic_shape_preserving_and_seeded():
  x = np.random.default_rng(1).standard_normal((2, 3, 2000)).astype(np.float32)
  a = vocoder.vocode(x, RATE, num_channels=4)
  b = vocoder.vocode(x, RATE, num_channels=4)
  assert a.shape == x.shape and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  # Rows are vocoded independently but with the same carriers.
  np.testing.assert_allclose(vocoder.vocode(x[1, 2], RATE, num_channels=4), a[1, 2], atol=1e-6)
  assert not np.allclose(vocoder.vocode(x, RATE, num_channels=4, seed=1), a)
  assert np.all(vocoder.vocode(np.zeros(500), RATE) == 0)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="carrier"):
    vocoder.vocode(np.zeros(100), RATE, carrier="pulse")
  with pytest.raises(ValueError, match="Nyquist"):
    vocoder.vocode(np.zeros(100), RATE, high_hz=4500.0)
  with pytest.raises(ValueError, match="low_hz"):
    vocoder.greenwood_band_edges(8, 4000.0, 1000.0)
