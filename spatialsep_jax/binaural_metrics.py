"""Binaural evaluation metrics, registered with `metrics.register_metric` (whole-example scope).

Each takes one example's estimates, references and unprocessed baseline as `[2, T]` rows in the
order (left ear, right ear) (`data.target_mics = ("L_tmic", "R_tmic")`, `eval.targets =
"targets_direct:0"`, `eval.baseline = "mixture"`) and returns named columns:

  better_ear_stoi       max over ears of STOI (pystoi); `_mixture`, `_improvement`
  mbstoi                modified binaural STOI (Andersen et al. 2018) of `pyclarity`
                        (clarity.evaluator.mbstoi); `_mixture`, `_improvement`
  interaural_coherence  IC = max over |lag| <= 1 ms of |normalised cross-correlation| of the
                        left and right signals, for: the clean target (`ic_target`), the
                        estimate (`ic_estimate`, error `ic_target_error`), the noise at the
                        input, baseline - target (`ic_noise_input`), and the residual noise of
                        the estimate, estimate - target (`ic_noise_residual`, error
                        `ic_noise_error` = |IC residual - IC input|)
  delta_ild             |ILD(estimate) - ILD(target)| broadband, dB (`metrics.delta_ild_db`),
                        and of the baseline (`delta_ild_db_mixture`)
  delta_itd             |ITD(estimate) - ITD(target)| by GCC-PHAT, ms (`metrics.delta_itd_ms`),
                        and of the baseline
Per-ear SNR / SI-SDR / STOI and their improvements are the built-in metrics `snr`, `sisdr`,
`stoi` (columns `<name>_s0` left, `<name>_s1` right).

Use: `config.eval.metric_modules = ("spatialsep_jax.binaural_metrics",)` and add the names to
`config.eval.metrics` (as `configs/fusion.py` does).
"""

import numpy as np
import scipy.signal

from spatialsep_jax import metrics

MODULE = "spatialsep_jax.binaural_metrics"
METRICS = ("better_ear_stoi", "mbstoi", "interaural_coherence", "delta_ild", "delta_itd")
IC_MAX_LAG_MS = 1.0


def _check_pair(name, *arrays):
  for array in arrays:
    if array.ndim != 2 or array.shape[0] != 2:
      raise ValueError(f"binaural metric {name!r} needs [2, T] signals (left, right ear) but got "
                       f"{array.shape}; set data.target_mics=('L_tmic', 'R_tmic') and "
                       "eval.targets='targets_direct:0'")


def _pairs(name, est, ref, baseline):
  est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
  baseline = np.broadcast_to(np.asarray(baseline, np.float64), ref.shape)
  _check_pair(name, est, ref, baseline)
  return est, ref, baseline


def interaural_coherence(left, right, rate, max_lag_ms=IC_MAX_LAG_MS) -> float:
  """max over |lag| <= max_lag_ms of |sum_t l[t] r[t + lag]| / sqrt(sum l^2 sum r^2), of two
  `[T]` signals (0 when either is silent)."""
  left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
  norm = np.sqrt(np.sum(left**2) * np.sum(right**2))
  if norm <= 0:
    return 0.0
  # correlate(right, left)[T - 1 + lag] = sum_t l[t] r[t + lag]
  correlation = scipy.signal.correlate(right, left, mode="full", method="fft")
  max_lag = max(1, int(round(max_lag_ms * 1e-3 * rate)))
  centre = len(left) - 1
  window = correlation[centre - max_lag:centre + max_lag + 1]
  return float(np.max(np.abs(window)) / norm)


@metrics.register_metric("better_ear_stoi", scope="example")
def better_ear_stoi(est, ref, baseline, rate) -> dict:
  """STOI of the better ear: max over ears of STOI(est_k, ref_k), and of the baseline."""
  est, ref, baseline = _pairs("better_ear_stoi", est, ref, baseline)
  value = max(metrics.stoi(e, r, rate) for e, r in zip(est, ref))
  unprocessed = max(metrics.stoi(b, r, rate) for b, r in zip(baseline, ref))
  return {"better_ear_stoi": value, "better_ear_stoi_mixture": unprocessed,
          "better_ear_stoi_improvement": value - unprocessed}


def mbstoi_value(est, ref, rate) -> float:
  """MBSTOI of a processed pair `[2, T]` against the clean pair `[2, T]` (pyclarity)."""
  try:
    from clarity.evaluator.mbstoi import mbstoi
  except ImportError as error:
    raise ImportError("MBSTOI needs pyclarity: pip install --no-deps 'pyclarity>=0.9' (its "
                      "MBSTOI needs only numpy, scipy and pyyaml), or pip install "
                      "'spatialsep-jax[binaural]'") from error
  return float(mbstoi(ref[0], ref[1], est[0], est[1], rate))


@metrics.register_metric("mbstoi", scope="example")
def mbstoi_metric(est, ref, baseline, rate) -> dict:
  est, ref, baseline = _pairs("mbstoi", est, ref, baseline)
  value, unprocessed = mbstoi_value(est, ref, rate), mbstoi_value(baseline, ref, rate)
  return {"mbstoi": value, "mbstoi_mixture": unprocessed,
          "mbstoi_improvement": value - unprocessed}


@metrics.register_metric("interaural_coherence", scope="example")
def interaural_coherence_metric(est, ref, baseline, rate) -> dict:
  est, ref, baseline = _pairs("interaural_coherence", est, ref, baseline)
  ic = lambda pair: interaural_coherence(pair[0], pair[1], rate)
  target, estimate = ic(ref), ic(est)
  noise_input, noise_residual = ic(baseline - ref), ic(est - ref)
  return {"ic_target": target, "ic_estimate": estimate,
          "ic_target_error": abs(estimate - target), "ic_noise_input": noise_input,
          "ic_noise_residual": noise_residual,
          "ic_noise_error": abs(noise_residual - noise_input)}


@metrics.register_metric("delta_ild", scope="example")
def delta_ild_metric(est, ref, baseline, rate) -> dict:
  est, ref, baseline = _pairs("delta_ild", est, ref, baseline)
  return {"delta_ild_db": float(metrics.delta_ild_db(est.T, ref.T)),
          "delta_ild_db_mixture": float(metrics.delta_ild_db(baseline.T, ref.T))}


@metrics.register_metric("delta_itd", scope="example")
def delta_itd_metric(est, ref, baseline, rate) -> dict:
  est, ref, baseline = _pairs("delta_itd", est, ref, baseline)
  return {"delta_itd_ms": float(metrics.delta_itd_ms(est.T, ref.T, rate)),
          "delta_itd_ms_mixture": float(metrics.delta_itd_ms(baseline.T, ref.T, rate))}
