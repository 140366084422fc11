"""Speech-quality metrics of the enhancement literature (seed 003), registered in `metrics`.

  config.eval.metric_modules = ("spatialsep_jax.quality_metrics",)
  config.eval.metrics = ("pesq", "stoi", "estoi", "segsnr", "composite", "dnsmos")

  segsnr     segmental SNR (dB): 30-ms Hann frames at 75 % overlap, each frame's SNR clipped
             to [-10, 35] dB, mean over frames (Loizou's `snrseg`, as in composite.m)
  llr        log-likelihood ratio of LPC models (order 10 below 10 kHz, else 16), mean of the
             best 95 % of frames
  wss        weighted spectral slope (Klatt 1982) over 25 critical bands, best 95 % of frames
  composite  CSIG / CBAK / COVL (Hu & Loizou 2008, the regression over PESQ, LLR, WSS and
             segSNR, each clipped to [1, 5]); PESQ wide-band at 16 kHz (narrow-band at 8 kHz)
             through the `pesq` package; columns csig, cbak, covl (and _s<k>, _mixture)
  dnsmos     DNSMOS P.835 SIG / BAK / OVRL (`spatialsep_jax.dnsmos`, speechmos' ONNX models):
             no reference; columns dnsmos_sig, dnsmos_bak, dnsmos_ovrl (and _mixture)

LLR, WSS and segSNR are written here (numpy) because no maintained package ships them: the
common Python ports (pysepm and forks) need unpackaged dependencies and their composite
function is broken; tests/test_quality_metrics.py checks them against pysepm-evo's functions
and brute-force loops. Frames follow composite.m: window round(0.03 fs), hop floor(window / 4),
MATLAB's `hanning` window (0.5 (1 - cos(2 pi k / (N + 1))), k = 1..N).
"""

import math

import numpy as np
import scipy.linalg

from spatialsep_jax import metrics

EPS = np.finfo(np.float64).eps
SEGSNR_RANGE_DB = (-10.0, 35.0)
KEEP_FRACTION = 0.95

# Klatt's 25 critical bands (centre, bandwidth in Hz) and composite.m's constants.
_CENTRES = np.array([50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378,
                     798.717, 904.128, 1020.38, 1148.30, 1288.72, 1442.54, 1610.70, 1794.16,
                     1993.93, 2211.08, 2446.71, 2701.97, 2978.04, 3276.17, 3597.63])
_BANDWIDTHS = np.array([70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398,
                        105.411, 116.256, 127.914, 140.423, 153.823, 168.154, 183.457, 199.776,
                        217.153, 235.631, 255.255, 276.072, 298.126, 321.465, 346.136])
WSS_KMAX, WSS_KLOCMAX = 20.0, 1.0


def frame_length(rate: int) -> tuple[int, int]:
  """(window, hop) in samples: round(30 ms), floor(window / 4)."""
  window = int(round(0.03 * rate))
  return window, int(np.floor(window / 4))


def _hanning(n: int) -> np.ndarray:
  return 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(1, n + 1) / (n + 1)))


def _frames(x: np.ndarray, rate: int) -> np.ndarray:
  """[num_frames, window] Hann-windowed frames, num_frames = floor(T / hop - window / hop)."""
  window, hop = frame_length(rate)
  count = int(np.floor(len(x) / hop - window / hop))
  if count < 1:
    raise ValueError(f"a signal of {len(x)} samples at {rate} Hz is shorter than one "
                     f"{window}-sample analysis frame")
  index = hop * np.arange(count)[:, None] + np.arange(window)[None, :]
  return x[index] * _hanning(window)


def _as_pair(est, ref):
  est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
  if est.shape != ref.shape or est.ndim != 1:
    raise ValueError(f"quality metrics take est [T] and ref [T] of one length, got "
                     f"{est.shape} and {ref.shape}")
  return est, ref


def segmental_snr(est, ref, rate) -> float:
  est, ref = _as_pair(est, ref)
  clean, processed = _frames(ref, rate), _frames(est, rate)
  signal = np.sum(clean**2, axis=-1)
  noise = np.sum((clean - processed) ** 2, axis=-1)
  per_frame = 10.0 * np.log10(signal / (noise + EPS) + EPS)
  return float(np.mean(np.clip(per_frame, *SEGSNR_RANGE_DB)))


def _autocorrelation(frames: np.ndarray, order: int) -> np.ndarray:
  """[F, order + 1] lags 0..order of each frame."""
  length = frames.shape[-1]
  return np.stack([np.sum(frames[:, :length - k] * frames[:, k:], axis=-1)
                   for k in range(order + 1)], axis=-1)


def _lpc(autocorrelation: np.ndarray) -> np.ndarray:
  """[order + 1] autocorrelation -> [1, -a_1, ..., -a_p] (Yule-Walker by scipy's Levinson)."""
  coefficients = scipy.linalg.solve_toeplitz(autocorrelation[:-1], autocorrelation[1:])
  return np.concatenate([[1.0], -coefficients])


def log_likelihood_ratio(est, ref, rate) -> float:
  est, ref = _as_pair(est, ref)
  order = 10 if rate < 10000 else 16
  clean = _autocorrelation(_frames(ref + EPS, rate), order)
  processed = _autocorrelation(_frames(est + EPS, rate), order)
  distortion = []
  for r_clean, r_processed in zip(clean, processed):
    toeplitz = scipy.linalg.toeplitz(r_clean)
    a_clean, a_processed = _lpc(r_clean), _lpc(r_processed)
    ratio = (a_processed @ toeplitz @ a_processed) / (a_clean @ toeplitz @ a_clean)
    distortion.append(np.log(ratio) if ratio > 0 and np.isfinite(ratio) else np.log(1000.0))
  return _best_fraction_mean(np.asarray(distortion))


def _best_fraction_mean(values: np.ndarray) -> float:
  values = np.sort(values)
  return float(np.mean(values[:int(round(len(values) * KEEP_FRACTION))]))


def _critical_band_filters(rate: int, half_fft: int) -> np.ndarray:
  """[25, half_fft] Gaussian-shaped critical-band weights (composite.m's `crit_filter`)."""
  max_freq = rate / 2.0
  bins = np.arange(half_fft)
  min_factor = np.exp(-30.0 / (2.0 * 2.303))
  centre_bins = np.floor(_CENTRES / max_freq * half_fft)
  widths = _BANDWIDTHS / max_freq * half_fft
  norm = np.log(_BANDWIDTHS[0]) - np.log(_BANDWIDTHS)
  filters = np.exp(-11.0 * ((bins[None] - centre_bins[:, None]) / widths[:, None]) ** 2
                   + norm[:, None])
  return filters * (filters > min_factor)


def _nearest_peaks(slope: np.ndarray, energy: np.ndarray) -> np.ndarray:
  """Per band: the energy of the spectral peak the slope leads to (Klatt's local maximum):
  walking up while the slope is positive, down while it is not. [B-1] and [B] -> [B-1]."""
  bands = len(energy)
  peaks = np.empty_like(slope)
  for i in range(len(slope)):
    n = i
    if slope[i] > 0:
      while n < bands - 1 and slope[n] > 0:
        n += 1
      peaks[i] = energy[n - 1]
    else:
      while n >= 0 and slope[n] <= 0:
        n -= 1
      peaks[i] = energy[n + 1]
  return peaks


def weighted_spectral_slope(est, ref, rate) -> float:
  est, ref = _as_pair(est, ref)
  window, hop = frame_length(rate)
  n_fft = int(2 ** np.ceil(np.log2(2 * window)))
  filters = _critical_band_filters(rate, n_fft // 2)

  def band_energy_db(x):   # [frames, 25] from composite.m's |FFT|^2 of the Hann frames
    energy = np.abs(np.fft.rfft(_frames(x + EPS, rate), n=n_fft, axis=-1))[:, :n_fft // 2] ** 2
    return np.maximum(10.0 * np.log10(energy @ filters.T), -100.0)

  clean, processed = band_energy_db(ref), band_energy_db(est)
  clean_slope, processed_slope = np.diff(clean, axis=1), np.diff(processed, axis=1)
  distortion = []
  for c, p, cs, ps in zip(clean, processed, clean_slope, processed_slope):
    w_clean = (WSS_KMAX / (WSS_KMAX + c.max() - c[:-1])
               * WSS_KLOCMAX / (WSS_KLOCMAX + _nearest_peaks(cs, c) - c[:-1]))
    w_processed = (WSS_KMAX / (WSS_KMAX + p.max() - p[:-1])
                   * WSS_KLOCMAX / (WSS_KLOCMAX + _nearest_peaks(ps, p) - p[:-1]))
    weights = (w_clean + w_processed) / 2.0
    distortion.append(np.sum(weights * (cs - ps) ** 2) / np.sum(weights))
  return _best_fraction_mean(np.asarray(distortion))


def composite_scores(est, ref, rate) -> dict:
  """{"csig", "cbak", "covl", "pesq", "llr", "wss", "segsnr"} of one estimate."""
  pesq_value = metrics.pesq(est, ref, rate)
  llr = log_likelihood_ratio(est, ref, rate)
  wss = weighted_spectral_slope(est, ref, rate)
  segsnr = segmental_snr(est, ref, rate)
  clip = lambda v: float(min(5.0, max(1.0, v)))  # noqa: E731
  return {"csig": clip(3.093 - 1.029 * llr + 0.603 * pesq_value - 0.009 * wss),
          "cbak": clip(1.634 + 0.478 * pesq_value - 0.007 * wss + 0.063 * segsnr),
          "covl": clip(1.594 + 0.805 * pesq_value - 0.512 * llr - 0.007 * wss),
          "pesq": float(pesq_value), "llr": llr, "wss": wss, "segsnr": segsnr}


def _per_reference_columns(scores_of, estimates, references, baseline, names):
  """Columns name, name_s<k>, name_mixture, name_improvement (means over references)."""
  baseline = np.broadcast_to(baseline, references.shape)
  columns = {}
  model = [scores_of(e, r) for e, r in zip(estimates, references)]
  mixture = [scores_of(b, r) for b, r in zip(baseline, references)]
  for name in names:
    values = np.array([m[name] for m in model])
    base = np.array([m[name] for m in mixture])
    for k, value in enumerate(values):
      columns[f"{name}_s{k}"] = float(value)
    columns[name] = float(np.mean(values))
    columns[f"{name}_mixture"] = float(np.mean(base))
    columns[f"{name}_improvement"] = float(np.mean(values - base))
  return columns


metrics.register_metric("segsnr")(segmental_snr)
metrics.register_metric("llr")(log_likelihood_ratio)
metrics.register_metric("wss")(weighted_spectral_slope)


@metrics.register_metric("composite", scope="example")
def composite(estimates, references, baseline, rate) -> dict:
  """CSIG / CBAK / COVL of each estimate and of the unprocessed baseline."""
  return _per_reference_columns(lambda e, r: composite_scores(e, r, rate), estimates,
                                references, baseline, ("csig", "cbak", "covl"))


@metrics.register_metric("dnsmos", scope="example")
def dnsmos_scores(estimates, references, baseline, rate) -> dict:
  """DNSMOS SIG / BAK / OVRL of each estimate and of the baseline (no reference used)."""
  from spatialsep_jax import dnsmos

  def scores_of(signal, reference):
    del reference
    try:
      result = dnsmos.score(signal, rate)
    except ValueError:   # silent output: DNSMOS is undefined
      return {"sig": math.nan, "bak": math.nan, "ovrl": math.nan}
    return result

  columns = _per_reference_columns(scores_of, estimates, references, baseline,
                                   ("sig", "bak", "ovrl"))
  return {f"dnsmos_{name}": value for name, value in columns.items()}


__all__ = ["composite", "composite_scores", "dnsmos_scores", "frame_length",
           "log_likelihood_ratio", "segmental_snr", "weighted_spectral_slope"]
