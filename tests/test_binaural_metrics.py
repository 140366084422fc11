"""Binaural metrics (spatialsep_jax/binaural_metrics.py) against independent computations:
brute-force numpy, pystoi and pyclarity called directly, closed-form cases."""

import numpy as np
import pystoi
import pytest
import scipy.signal

from spatialsep_jax import binaural_metrics
from spatialsep_jax import metrics

RATE = 8000


def _speech_like(seed, seconds=1.5):
  """Band-limited noise gated into syllable-length bursts (STOI needs active frames)."""
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal(int(seconds * RATE))
  b, a = scipy.signal.butter(4, [200 / (RATE / 2), 3000 / (RATE / 2)], "band")
  gate = np.repeat(rng.random(int(seconds * 20)) > 0.35, RATE // 20)
  return scipy.signal.lfilter(b, a, noise) * gate[:noise.size]


def _binaural(seed, delay=3, gain=0.6, seconds=1.5):
  """[2, T]: left = s, right = gain * s delayed by `delay` samples (a source on the left)."""
  left = _speech_like(seed, seconds)
  right = gain * np.concatenate([np.zeros(delay), left[:-delay]])
  return np.stack([left, right])


def _brute_force_ic(left, right, max_lag):
  norm = np.sqrt(np.sum(left**2) * np.sum(right**2))
  values = []
  for lag in range(-max_lag, max_lag + 1):
    if lag >= 0:
      values.append(np.dot(left[:len(left) - lag], right[lag:]))
    else:
      values.append(np.dot(left[-lag:], right[:len(right) + lag]))
  return max(abs(v) for v in values) / norm


def test_interaural_coherence_matches_brute_force_and_closed_forms():
  rng = np.random.default_rng(0)
  left, right = rng.standard_normal((2, 2000))
  mixed = 0.7 * left + 0.3 * right
  for a, b in ((left, right), (left, mixed), (mixed, left)):
    assert binaural_metrics.interaural_coherence(a, b, RATE) == pytest.approx(
        _brute_force_ic(a, b, 8), rel=1e-9)
  pair = _binaural(1, delay=5, gain=0.3)       # delayed, scaled copy inside +-1 ms: IC ~ 1
  assert binaural_metrics.interaural_coherence(pair[0], pair[1], RATE) > 0.99
  far = np.concatenate([np.zeros(40), pair[0][:-40]])    # 5 ms: outside the lag range
  assert binaural_metrics.interaural_coherence(pair[0], far, RATE) < 0.5
  assert binaural_metrics.interaural_coherence(pair[0], np.zeros_like(pair[0]), RATE) == 0.0


def test_better_ear_stoi_is_the_max_of_pystoi_per_ear():
  ref = _binaural(2)
  rng = np.random.default_rng(3)
  est = ref + rng.standard_normal(ref.shape) * np.array([[0.3], [0.05]])   # right ear cleaner
  baseline = ref + rng.standard_normal(ref.shape) * 0.5
  result = binaural_metrics.better_ear_stoi(est, ref, baseline, RATE)
  per_ear = [pystoi.stoi(r, e, RATE) for e, r in zip(est, ref)]
  assert per_ear[1] > per_ear[0]
  assert result["better_ear_stoi"] == pytest.approx(max(per_ear), abs=1e-9)
  assert result["better_ear_stoi_mixture"] == pytest.approx(
      max(pystoi.stoi(r, b, RATE) for b, r in zip(baseline, ref)), abs=1e-9)


def test_mbstoi_against_pyclarity_known_cases():
  mbstoi = pytest.importorskip("clarity.evaluator.mbstoi").mbstoi
  ref = _binaural(4, seconds=1.0)
  rng = np.random.default_rng(5)
  noises = rng.standard_normal(ref.shape) * ref.std()
  result = binaural_metrics.mbstoi_metric(ref + 0.3 * noises, ref, ref + 1.0 * noises, RATE)
  direct = mbstoi(ref[0], ref[1], ref[0] + 0.3 * noises[0], ref[1] + 0.3 * noises[1], RATE)
  assert result["mbstoi"] == pytest.approx(direct, abs=1e-12)
  assert result["mbstoi_improvement"] == pytest.approx(
      result["mbstoi"] - result["mbstoi_mixture"], abs=1e-12)
  # The clean signal scores 1; more noise scores lower.
  assert binaural_metrics.mbstoi_value(ref, ref, RATE) == pytest.approx(1.0, abs=1e-6)
  assert 1.0 > result["mbstoi"] > result["mbstoi_mixture"] > 0.0


def test_delta_ild_and_itd_closed_forms_and_evaluate_example_columns():
  ref = _binaural(6, delay=4, gain=0.5)
  gain_db = 4.0
  est = ref * np.array([[1.0], [10 ** (-gain_db / 20)]])        # right ear 4 dB quieter
  delayed = np.stack([ref[0], np.concatenate([np.zeros(2), ref[1][:-2]])])   # 2 samples more
  assert binaural_metrics.delta_ild_metric(est, ref, ref, RATE)["delta_ild_db"] == pytest.approx(
      gain_db, rel=1e-6)
  itd = binaural_metrics.delta_itd_metric(delayed, ref, est, RATE)
  assert itd["delta_itd_ms"] == pytest.approx(1e3 * 2 / RATE, abs=0.02)
  assert itd["delta_itd_ms_mixture"] == pytest.approx(0.0, abs=0.02)
  with pytest.raises(ValueError, match="target_mics"):
    binaural_metrics.delta_ild_metric(est[:1], ref[:1], ref[:1], RATE)
  # Through the metric registry, as evaluation calls it (a module named in metric_modules).
  result = metrics.evaluate_example(
      est, ref, ref + 0.1, RATE, metrics=("snr", "delta_ild", "interaural_coherence"),
      align=False, metric_modules=(binaural_metrics.MODULE,))
  assert result["delta_ild_db"] == pytest.approx(gain_db, rel=1e-6)
  assert result["ic_target"] == pytest.approx(
      binaural_metrics.interaural_coherence(ref[0], ref[1], RATE), abs=1e-12)
  assert result["ic_noise_residual"] == pytest.approx(
      binaural_metrics.interaural_coherence(*(est - ref), RATE), abs=1e-12)
  assert result["snr"].shape == (2,)
