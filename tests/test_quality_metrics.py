"""Quality metrics of seed 003 (segSNR, LLR, WSS, CSIG/CBAK/COVL, DNSMOS) against brute-force
transcriptions of Loizou's composite.m definitions written here with plain loops."""

import math

import numpy as np
import pytest

from spatialsep_jax import metrics
from spatialsep_jax import quality_metrics as qm

RATE = 16000


def _voiced(seconds=1.5, seed=0):
  """A speech-like test signal: harmonics of a gliding F0 under a syllabic envelope."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * RATE)) / RATE
  f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
  phase = 2 * np.pi * np.cumsum(f0) / RATE
  voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
  envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
  return 0.1 * voiced * envelope + 1e-3 * rng.standard_normal(t.size)


@pytest.fixture(scope="module")
def pair():
  clean = _voiced()
  noisy = clean + 0.03 * np.random.default_rng(1).standard_normal(clean.size)
  return noisy, clean


def _matlab_frames(x):
  window = round(0.03 * RATE)
  hop = math.floor(window / 4)
  hann = np.array([0.5 * (1 - math.cos(2 * math.pi * k / (window + 1)))
                   for k in range(1, window + 1)])
  count = math.floor(len(x) / hop - window / hop)
  return [x[i * hop:i * hop + window] * hann for i in range(count)]


def test_segmental_snr_equals_a_frame_loop(pair):
  noisy, clean = pair
  values = []
  for c, p in zip(_matlab_frames(clean), _matlab_frames(noisy)):
    snr = 10 * math.log10(sum(c**2) / (sum((c - p) ** 2) + np.finfo(float).eps)
                          + np.finfo(float).eps)
    values.append(min(35.0, max(-10.0, snr)))
  assert qm.segmental_snr(noisy, clean, RATE) == pytest.approx(np.mean(values), rel=1e-9)
  assert qm.segmental_snr(clean, clean, RATE) == pytest.approx(35.0)


def _levinson(r, order):
  """Levinson-Durbin recursion with loops: prediction polynomial [1, -a_1, ..., -a_p]."""
  a = np.zeros(order + 1)
  a[0] = 1.0
  error = r[0]
  for i in range(1, order + 1):
    k = -(r[i] + sum(a[j] * r[i - j] for j in range(1, i))) / error
    a_new = a.copy()
    for j in range(1, i):
      a_new[j] = a[j] + k * a[i - j]
    a_new[i] = k
    a, error = a_new, error * (1 - k * k)
  return a


def test_llr_equals_loops_over_levinson_lpc(pair):
  noisy, clean = pair
  eps = np.finfo(float).eps
  order = 16
  distortion = []
  for c, p in zip(_matlab_frames(clean + eps), _matlab_frames(noisy + eps)):
    r_c = np.array([np.dot(c[:len(c) - k], c[k:]) for k in range(order + 1)])
    r_p = np.array([np.dot(p[:len(p) - k], p[k:]) for k in range(order + 1)])
    a_c, a_p = _levinson(r_c, order), _levinson(r_p, order)
    toeplitz = np.array([[r_c[abs(i - j)] for j in range(order + 1)] for i in range(order + 1)])
    distortion.append(math.log((a_p @ toeplitz @ a_p) / (a_c @ toeplitz @ a_c)))
  distortion = np.sort(distortion)[:round(len(distortion) * 0.95)]
  assert qm.log_likelihood_ratio(noisy, clean, RATE) == pytest.approx(np.mean(distortion),
                                                                      rel=1e-6)
  assert abs(qm.log_likelihood_ratio(clean, clean, RATE)) < 1e-9


def _wss_loops(clean, processed):
  """composite.m's wss with its 1-based loops transcribed (including its choice of the band
  below the peak as the 'nearest peak' when searching up)."""
  eps = np.finfo(float).eps
  window = round(0.03 * RATE)
  n_fft = 2 ** math.ceil(math.log2(2 * window))
  half = n_fft // 2
  crit = np.zeros((25, half))
  for i in range(25):
    f0 = qm._CENTRES[i] / (RATE / 2) * half
    bw = qm._BANDWIDTHS[i] / (RATE / 2) * half
    norm = math.log(qm._BANDWIDTHS[0]) - math.log(qm._BANDWIDTHS[i])
    for j in range(half):
      value = math.exp(-11 * ((j - math.floor(f0)) / bw) ** 2 + norm)
      crit[i, j] = value if value > math.exp(-30 / (2 * 2.303)) else 0.0
  distortion = []
  for c, p in zip(_matlab_frames(clean + eps), _matlab_frames(processed + eps)):
    energies = []
    for frame in (c, p):
      spectrum = np.abs(np.fft.fft(frame, n_fft)[:half]) ** 2
      energies.append(np.array([max(-100.0, 10 * math.log10(crit[i] @ spectrum))
                                for i in range(25)]))
    weights_both = []
    slopes = []
    for energy in energies:
      slope = [energy[i + 1] - energy[i] for i in range(24)]
      peaks = []
      for i in range(1, 25):                   # MATLAB indices 1..24
        n = i
        if slope[i - 1] > 0:
          while n < 25 and slope[n - 1] > 0:
            n += 1
          peaks.append(energy[n - 2])          # energy(n - 1), 1-based
        else:
          while n > 0 and slope[n - 1] <= 0:
            n -= 1
          peaks.append(energy[n])              # energy(n + 1), 1-based
      top = max(energy)
      weights_both.append([20 / (20 + top - energy[i]) * 1 / (1 + peaks[i] - energy[i])
                           for i in range(24)])
      slopes.append(slope)
    w = (np.array(weights_both[0]) + np.array(weights_both[1])) / 2
    distortion.append(np.sum(w * (np.array(slopes[0]) - np.array(slopes[1])) ** 2) / np.sum(w))
  return np.mean(np.sort(distortion)[:round(len(distortion) * 0.95)])


def test_wss_equals_the_transcribed_loops(pair):
  noisy, clean = pair
  short_noisy, short_clean = noisy[:6000], clean[:6000]
  assert qm.weighted_spectral_slope(short_noisy, short_clean, RATE) == pytest.approx(
      _wss_loops(short_clean, short_noisy), rel=1e-6)
  assert qm.weighted_spectral_slope(clean, clean, RATE) == pytest.approx(0.0, abs=1e-9)


def test_composite_and_dnsmos_through_the_metric_registry(pair):
  noisy, clean = pair
  pesq_lib = pytest.importorskip("pesq")
  result = metrics.evaluate_example(noisy[None], clean[None], noisy, RATE,
                                    metrics=("composite", "segsnr"), align=False,
                                    metric_modules=("spatialsep_jax.quality_metrics",))
  parts = qm.composite_scores(noisy, clean, RATE)
  assert parts["pesq"] == pytest.approx(pesq_lib.pesq(RATE, clean, noisy, "wb"), abs=1e-6)
  want_csig = min(5, max(1, 3.093 - 1.029 * parts["llr"] + 0.603 * parts["pesq"]
                         - 0.009 * parts["wss"]))
  want_cbak = min(5, max(1, 1.634 + 0.478 * parts["pesq"] - 0.007 * parts["wss"]
                         + 0.063 * parts["segsnr"]))
  want_covl = min(5, max(1, 1.594 + 0.805 * parts["pesq"] - 0.512 * parts["llr"]
                         - 0.007 * parts["wss"]))
  assert (result["csig_s0"], result["cbak_s0"], result["covl_s0"]) == pytest.approx(
      (want_csig, want_cbak, want_covl))
  assert result["csig_improvement"] == pytest.approx(0.0)     # the baseline is the estimate
  assert result["segsnr"][0] == pytest.approx(qm.segmental_snr(noisy, clean, RATE))
  pytest.importorskip("speechmos")
  from spatialsep_jax import dnsmos
  scores = metrics.evaluate_example(noisy[None], clean[None], clean, RATE, metrics=("dnsmos",),
                                    align=False,
                                    metric_modules=("spatialsep_jax.quality_metrics",))
  direct = dnsmos.score(noisy, RATE)
  assert scores["dnsmos_sig_s0"] == pytest.approx(direct["sig"])
  assert scores["dnsmos_ovrl_mixture"] == pytest.approx(dnsmos.score(clean, RATE)["ovrl"])
