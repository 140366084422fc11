"""Evaluation metrics: SI-SDR, SNR, BSS-eval SDR, STOI/ESTOI, PESQ, interaural errors.

Batched jitted metrics (`sisdr`, `snr`, their improvements) take `[..., T]` arrays; the
per-example suite (`evaluate_example`, `evaluate_many`) runs in numpy/scipy so it can fan out
over a process pool. Values are in dB except STOI/ESTOI (0..1) and PESQ (MOS-LQO).
"""

import dataclasses
import functools
import importlib
import math
import multiprocessing
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pystoi
import scipy.linalg
import scipy.optimize
import scipy.signal
import scipy.stats
import tqdm

from spatialsep_jax import sdr as sdr_lib
from spatialsep_jax import vocoder as vocoder_lib

METRIC_NAMES = ("sisdr", "snr", "sdr", "stoi", "estoi", "pesq")
DEFAULT_METRICS = ("sisdr", "sdr", "stoi", "pesq")
PESQ_RATES = (8000, 16000)


# ------------------------------------------------------------------ registered metrics


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  name: str
  fn: Callable
  scope: str       # "source": fn(est [T], ref [T], rate) -> float, per reference
                   # "example": fn(est [K, T], ref [K, T], baseline [K, T], rate) -> {column: float}


_REGISTERED: dict[str, MetricSpec] = {}


def register_metric(name: str, *, scope: str = "source"):
  """Decorator adding a metric to `evaluate_example` under `name` (put it in
  `config.eval.metrics`; its module in `config.eval.metric_modules`, so that evaluation
  workers import it too).

    scope="source":  fn(est [T], ref [T], rate) -> float; scored on the estimate and on the
                     unprocessed baseline like the built-ins: columns `name`, `name_mixture`,
                     `name_improvement` (and `_s<k>` per reference).
    scope="example": fn(est [K, T], ref [K, T], baseline [K, T], rate) -> {column: float},
                     whole-example metrics (e.g. binaural intelligibility across both ears);
                     the returned columns are written as they are.
  """
  if scope not in ("source", "example"):
    raise ValueError(f"register_metric({name!r}): scope must be 'source' or 'example', got {scope!r}")
  if name in METRIC_NAMES:
    raise ValueError(f"register_metric({name!r}): a built-in metric has this name; choose another")

  def wrap(fn):
    _REGISTERED[name] = MetricSpec(name, fn, scope)
    return fn

  return wrap


def import_metric_modules(modules=()) -> None:
  """Imports the modules that register metrics (`config.eval.metric_modules`)."""
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as error:
      raise ValueError(f"config.eval.metric_modules: cannot import {module!r} ({error}); "
                       "name an importable module that registers metrics") from error


def metric_names() -> tuple[str, ...]:
  """Built-in and registered metric names."""
  return METRIC_NAMES + tuple(sorted(_REGISTERED))


@jax.jit
def sisdr(est, ref):
  """Zero-mean scale-invariant SDR in dB: `[..., T]` x `[..., T]` -> `[...]` (float32).

  The formula (and what silence scores) is in `spatialsep_jax.sdr`.
  """
  return sdr_lib.sisdr_db(est.astype(jnp.float32), ref.astype(jnp.float32), jnp)


@jax.jit
def snr(est, ref):
  """Plain SNR in dB (`spatialsep_jax.sdr`): `[..., T]` -> `[...]` (float32)."""
  return sdr_lib.snr_db(est.astype(jnp.float32), ref.astype(jnp.float32), jnp)


@jax.jit
def sisdr_improvement(est, ref, mixture):
  """SI-SDR(est, ref) - SI-SDR(mixture, ref); mixture `[..., T]` is the reference-mic channel,
  broadcast against est/ref (e.g. est, ref `[B, S, T]` with mixture `[B, 1, T]`)."""
  return sisdr(est, ref) - sisdr(jnp.broadcast_to(mixture, ref.shape), ref)


@jax.jit
def snr_improvement(est, ref, mixture):
  """SNR(est, ref) - SNR(mixture, ref), broadcasting as `sisdr_improvement`."""
  return snr(est, ref) - snr(jnp.broadcast_to(mixture, ref.shape), ref)


# ------------------------------------------------------------------ BSS-eval SDR


def _lagged_xcorr(spectra_a, spectra_b, n_fft):
  """xc[..., d] = sum_u a[u] b[u + d] for all circular lags d (negative lags at the end)."""
  return np.fft.irfft(np.conj(spectra_a) * spectra_b, n=n_fft)


def _solve_psd(matrix, rhs):
  try:
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(matrix), rhs)
  except np.linalg.LinAlgError:  # singular Gram (e.g. linearly dependent references)
    return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def bss_eval_sources(est, ref, filter_length=512):
  """BSS-eval v3 `bss_eval_sources` (SDR, SIR, SAR) without permutation search.

  The classic decomposition (Vincent et al. 2006; the metric of mir_eval's
  `separation.bss_eval_sources` and of museval's v3 mode): each estimate, zero-padded by
  filter_length - 1 samples, is projected by least squares onto `filter_length` delayed copies
  of its own reference (s_target) and of all references (P_all), over the whole signal
  (time-invariant filter, no framing). e_interf = P_all - s_target, e_artif = est - P_all;
  SDR = 10 log10(||s_target||^2 / ||e_interf + e_artif||^2).
  Written here because mir_eval deprecated `bss_eval_sources` in 0.8 (removal in 0.9) and
  fast_bss_eval has had no release since 2022; tests compare it with mir_eval and a brute-force
  least-squares solve. The Gram matrices depend only on the references, so several sets of
  estimates (e.g. model outputs and the mixture) share one factorisation.

  Args:
    est: `[..., S, T]` estimates already aligned with ref (leading axes: sets of estimates
      evaluated against the same references).
    ref: `[S, T]` references (none may be all zeros).
    filter_length: taps of the allowed distortion filter (512 as in BSS-eval).
  Returns:
    sdr, sir, sar: `[..., S]` float64 arrays in dB.
  """
  est = np.asarray(est, np.float64)
  ref = np.asarray(ref, np.float64)
  if ref.ndim != 2 or est.shape[-2:] != ref.shape:
    raise ValueError(f"expected est [..., S, T] and ref [S, T] with matching S and T, got "
                     f"{est.shape} and {ref.shape}")
  if not np.all(np.any(ref != 0, axis=-1)):
    raise ValueError("a reference source is all zeros; BSS-eval SDR is undefined for silence")
  num_sources, length = ref.shape
  leading_shape = est.shape[:-2]
  est = est.reshape(-1, num_sources, length)
  padded_length = length + filter_length - 1
  n_fft = int(2**math.ceil(math.log2(padded_length)))
  ref_spectra = np.fft.rfft(ref, n=n_fft)
  est_spectra = np.fft.rfft(est, n=n_fft)
  lags = np.arange(filter_length)

  ref_xcorr = _lagged_xcorr(ref_spectra[:, None], ref_spectra[None, :], n_fft)
  # gram[(i, tau), (j, sigma)] = xc_ij[tau - sigma]: block (i, j) is Toeplitz.
  gram = np.block([[scipy.linalg.toeplitz(ref_xcorr[i, j, lags], ref_xcorr[i, j, -lags])
                    for j in range(num_sources)] for i in range(num_sources)])
  # rhs[e, k, i, tau] = <ref_i delayed by tau, est_ek>.
  rhs = _lagged_xcorr(ref_spectra[None, None], est_spectra[:, :, None], n_fft)[..., lags]
  num_sets = est.shape[0]

  coefficients_all = _solve_psd(gram, rhs.reshape(num_sets * num_sources, -1).T)
  coefficients_all = coefficients_all.T.reshape(num_sets, num_sources, num_sources,
                                                filter_length)
  coefficients_own = np.zeros_like(coefficients_all)
  for k in range(num_sources):
    block = slice(k * filter_length, (k + 1) * filter_length)
    coefficients_own[:, k, k] = _solve_psd(gram[block, block], rhs[:, k, k].T).T

  def filtered_references(coefficients):  # sum_i ref_i * c_i, full convolution
    spectra = np.sum(ref_spectra * np.fft.rfft(coefficients, n=n_fft), axis=-2)
    return np.fft.irfft(spectra, n=n_fft)[..., :padded_length]

  target = filtered_references(coefficients_own)
  interference = filtered_references(coefficients_all) - target
  padded_est = np.concatenate([est, np.zeros(est.shape[:-1] + (filter_length - 1,))], axis=-1)
  artifacts = padded_est - target - interference

  def ratio_db(numerator, denominator):
    with np.errstate(divide="ignore"):
      return 10.0 * np.log10(np.sum(numerator**2, axis=-1) / np.sum(denominator**2, axis=-1))

  sdr_db = ratio_db(target, interference + artifacts)
  sir_db = ratio_db(target, interference)
  sar_db = ratio_db(target + interference, artifacts)
  return tuple(x.reshape(leading_shape + (num_sources,)) for x in (sdr_db, sir_db, sar_db))


def sdr(est, ref, filter_length=512):
  """BSS-eval v3 SDR `[..., S]` (see `bss_eval_sources`); nan where a reference is silent."""
  if not np.all(np.any(np.asarray(ref) != 0, axis=-1)):
    return np.full(np.shape(est)[:-1], np.nan)
  return bss_eval_sources(est, ref, filter_length)[0]


# ------------------------------------------------------------------ intelligibility / quality


def stoi(est, ref, rate, extended=False):
  """STOI (or ESTOI with extended=True) of one estimate `[T]` against its reference `[T]`.

  pystoi resamples to its 10 kHz internal rate itself.
  """
  return float(pystoi.stoi(np.asarray(ref, np.float64), np.asarray(est, np.float64), rate,
                           extended=extended))


def pesq(est, ref, rate, mode=None):
  """PESQ (ITU-T P.862 MOS-LQO) of one estimate `[T]` against its reference `[T]`.

  Narrow-band at 8 kHz, wide-band at 16 kHz (mode=None picks by rate; "nb" is also valid at
  16 kHz). Other rates are resampled (polyphase) to the nearest of 8 or 16 kHz first.
  Returns nan instead of raising when PESQ fails (no utterance found, silence, too short).
  """
  target_rate = min(PESQ_RATES, key=lambda candidate: abs(candidate - rate))
  mode = mode or ("nb" if target_rate == 8000 else "wb")
  if mode not in ("nb", "wb") or (mode == "wb" and target_rate != 16000):
    raise ValueError(f"PESQ mode {mode!r} is invalid at {target_rate} Hz; use 'nb' or, "
                     "at 16 kHz, 'wb'")
  est = np.asarray(est, np.float64)
  ref = np.asarray(ref, np.float64)
  if target_rate != rate:
    from data_pipeline import corpus_base
    est = corpus_base.resample(est, rate, target_rate, what="PESQ input", dtype=np.float64)
    ref = corpus_base.resample(ref, rate, target_rate, what="PESQ input", dtype=np.float64)
  if not (np.all(np.isfinite(est)) and np.all(np.isfinite(ref))):
    return math.nan
  from spatialsep_jax import extras
  if not extras.available("pesq", "pesq", "PESQ (recorded as missing)"):
    return math.nan  # recorded as missing, like any other PESQ failure
  import pesq as pesq_lib  # imported here so hosts without the C extension can use the rest
  try:
    with np.errstate(all="ignore"):  # pesq divides by the peak, nan for silence
      return float(pesq_lib.pesq(target_rate, ref, est, mode))
  except (pesq_lib.PesqError, ValueError):
    return math.nan


# ------------------------------------------------------------------ interaural errors


def _check_binaural(est, ref):
  if est.ndim != 2 or est.shape[-1] != 2 or est.shape != ref.shape:
    raise ValueError(f"expected est and ref of shape [T, 2] (left, right), got {est.shape} "
                     f"and {ref.shape}")


def interaural_level_difference_db(x, rate=None, band_edges_hz=None, eps=1e-12):
  """ILD = 10 log10(E_left / E_right) of `[T, 2]`: broadband scalar, or `[num_bands]` per band.

  Per band (band_edges_hz and rate given): energies summed over STFT bins (32 ms Hann
  frames) between consecutive edges.
  """
  x = np.asarray(x, np.float64)
  if band_edges_hz is None:
    energy = np.sum(x**2, axis=0)
    return 10.0 * np.log10((energy[0] + eps) / (energy[1] + eps))
  if rate is None:
    raise ValueError("per-band ILD needs the sample rate; pass rate=")
  frequencies, _, spectra = scipy.signal.stft(x.T, fs=rate, nperseg=int(0.032 * rate))
  power = np.sum(np.abs(spectra)**2, axis=-1)
  edges = np.asarray(band_edges_hz, np.float64)
  band_energy = np.stack([
      np.sum(power[:, (frequencies >= low) & (frequencies < high)], axis=-1)
      for low, high in zip(edges[:-1], edges[1:])], axis=-1)
  return 10.0 * np.log10((band_energy[0] + eps) / (band_energy[1] + eps))


def delta_ild_db(est, ref, rate=None, band_edges_hz=None):
  """Absolute ILD error |ILD(est) - ILD(ref)| in dB of `[T, 2]` signals.

  Broadband (one energy ratio over the whole signal) by default; per band `[num_bands]` when
  band_edges_hz (and rate) are given.
  """
  est, ref = np.asarray(est), np.asarray(ref)
  _check_binaural(est, ref)
  return np.abs(interaural_level_difference_db(est, rate, band_edges_hz)
                - interaural_level_difference_db(ref, rate, band_edges_hz))


def interaural_time_difference_ms(x, rate, max_itd_ms=1.0):
  """ITD of `[T, 2]` by GCC-PHAT: positive when the right channel lags the left (source left).

  The peak of the phase-transform cross-correlation within +-max_itd_ms is refined by
  parabolic interpolation to sub-sample precision.
  """
  x = np.asarray(x, np.float64)
  length = x.shape[0]
  n_fft = int(2**math.ceil(math.log2(2 * length)))
  spectra = np.fft.rfft(x, n=n_fft, axis=0)
  cross = np.conj(spectra[:, 0]) * spectra[:, 1]
  correlation = np.fft.irfft(cross / np.maximum(np.abs(cross), 1e-12), n=n_fft)
  max_lag = max(1, int(round(max_itd_ms * 1e-3 * rate)))
  lags = np.arange(-max_lag, max_lag + 1)
  values = correlation[lags]
  best = int(np.argmax(values))
  offset = 0.0
  if 0 < best < len(lags) - 1:
    left, centre, right = values[best - 1:best + 2]
    curvature = left - 2.0 * centre + right
    if curvature < 0:
      offset = 0.5 * (left - right) / curvature
  return 1e3 * (lags[best] + offset) / rate


def delta_itd_ms(est, ref, rate, max_itd_ms=1.0):
  """Absolute ITD error |ITD(est) - ITD(ref)| in ms of `[T, 2]` signals (GCC-PHAT)."""
  est, ref = np.asarray(est), np.asarray(ref)
  _check_binaural(est, ref)
  return abs(interaural_time_difference_ms(est, rate, max_itd_ms)
             - interaural_time_difference_ms(ref, rate, max_itd_ms))


# ------------------------------------------------------------------ per-example suite


def _metric_per_source(name, est, ref, rate):
  """`[S, T]` x `[S, T]` -> `[S]` float64 values of one metric."""
  if name == "sisdr":
    return sdr_lib.sisdr_db(est, ref, np)
  if name == "snr":
    return sdr_lib.snr_db(est, ref, np)
  if name == "sdr":
    return sdr(est, ref)
  if name in ("stoi", "estoi"):
    return np.array([stoi(e, r, rate, extended=name == "estoi") for e, r in zip(est, ref)])
  if name == "pesq":
    return np.array([pesq(e, r, rate) for e, r in zip(est, ref)])
  if name in _REGISTERED and _REGISTERED[name].scope == "source":
    return np.array([_REGISTERED[name].fn(e, r, rate) for e, r in zip(est, ref)], np.float64)
  raise ValueError(f"unknown metric {name!r}; use some of {metric_names()}")


def align_by_sisdr(est, ref):
  """Permutation `[S]` (estimate index per reference) maximising the summed SI-SDR."""
  est = np.asarray(est, np.float64)
  ref = np.asarray(ref, np.float64)
  pairwise = sdr_lib.sisdr_db(est[None], ref[None], np, pairwise=True)[0]
  rows, cols = scipy.optimize.linear_sum_assignment(pairwise, maximize=True)
  perm = np.zeros(ref.shape[0], np.int64)
  perm[cols] = rows
  return perm


def evaluate_example(est, ref, mixture_ref, rate, metrics=DEFAULT_METRICS, vocoder_config=None,
                     align=True, metric_modules=()):
  """All metrics of one example and their improvements over the unprocessed mixture.

  Estimates are PIT-aligned to the references by SI-SDR first (`align=True`, separation), or
  paired in order (`align=False`: output k with reference k, enhancement / per-ear targets).

  Args:
    est: `[N, T]` estimates (N >= S; extra outputs such as a noise estimate are dropped).
    ref: `[S, T]` references.
    mixture_ref: `[T]` unprocessed signal (mixture at the reference microphone), or `[S, T]`
      one per reference (e.g. the mixture at each ear).
    rate: sample rate in Hz.
    metrics: names from `metric_names()` (built-ins and registered metrics).
    vocoder_config: None to skip the CI simulation, else a dict of `vocoder.vocode` keyword
      arguments ({} for the defaults): every metric is recomputed on vocoded estimates,
      references and mixture under "vocoded_" keys.
    metric_modules: modules that register metrics, imported first (evaluation workers are
      fresh processes).
  Returns:
    dict with "perm" `[S]` and, per metric m, "m", "m_mixture", "m_improvement" (each `[S]`),
    plus the "vocoded_m..." keys when vocoder_config is given.
  """
  est = np.asarray(est, np.float64)
  ref = np.asarray(ref, np.float64)
  mixture_ref = np.asarray(mixture_ref, np.float64)
  if est.ndim != 2 or ref.ndim != 2 or mixture_ref.ndim not in (1, 2):
    raise ValueError(f"expected est [N, T], ref [S, T], mixture_ref [T] or [S, T]; got "
                     f"{est.shape}, {ref.shape}, {mixture_ref.shape}")
  if not est.shape[-1] == ref.shape[-1] == mixture_ref.shape[-1] or est.shape[0] < ref.shape[0]:
    raise ValueError(f"lengths must agree and N >= S; got est {est.shape}, ref {ref.shape}, "
                     f"mixture {mixture_ref.shape}")
  import_metric_modules(metric_modules)
  unknown = set(metrics) - set(metric_names())
  if unknown:
    raise ValueError(f"unknown metrics {sorted(unknown)}; use some of {metric_names()} (a "
                     "registered metric's module goes in config.eval.metric_modules)")
  perm = align_by_sisdr(est, ref) if align else np.arange(ref.shape[0])
  aligned = est[perm]
  mixture = np.broadcast_to(mixture_ref, ref.shape)
  results = {"perm": perm}
  versions = [("", aligned, ref, mixture)]
  if vocoder_config is not None:
    vocoded = [vocoder_lib.vocode(x, rate, **vocoder_config) for x in (aligned, ref, mixture)]
    versions.append(("vocoded_", *vocoded))
  for prefix, estimate, reference, unprocessed in versions:
    for name in metrics:
      if name in _REGISTERED and _REGISTERED[name].scope == "example":
        columns = _REGISTERED[name].fn(estimate, reference, unprocessed, rate)
        results.update({f"{prefix}{column}": value for column, value in columns.items()})
        continue
      if name == "sdr":  # one shared Gram factorisation for both
        value, baseline = sdr(np.stack([estimate, unprocessed]), reference)
      else:
        value = _metric_per_source(name, estimate, reference, rate)
        baseline = _metric_per_source(name, unprocessed, reference, rate)
      results[f"{prefix}{name}"] = value
      results[f"{prefix}{name}_mixture"] = baseline
      results[f"{prefix}{name}_improvement"] = value - baseline
  return results


def single_threaded_pool(num_workers: int):
  """A spawn-context process pool whose workers run BLAS/OpenMP on one thread each.

  Without the limit every worker starts a thread per core, and N workers next to a training
  run oversubscribe the cores N-fold; spinning BLAS threads then made the evaluation of
  one 4-s mixture take ~5 s instead of ~1 s on a 16-core GPU host.
  """
  names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
  saved = {name: os.environ.get(name) for name in names}
  os.environ.update({name: "1" for name in names})
  try:  # spawned children copy the environment when they start, i.e. here
    return multiprocessing.get_context("spawn").Pool(num_workers)
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def _evaluate_tuple(example, rate, metrics, vocoder_config):
  est, ref, mixture_ref = example
  return evaluate_example(est, ref, mixture_ref, rate, metrics, vocoder_config)


def evaluate_many(examples, rate, metrics=DEFAULT_METRICS, num_workers=0, progress=True,
                  vocoder_config=None):
  """`evaluate_example` over a sequence of (est, ref, mixture_ref) tuples, in order.

  num_workers: processes of a spawn-context pool (0 = os.cpu_count(), 1 = in this process;
  spawn because forking a process that has started JAX's threads can deadlock).
  progress: show a tqdm bar. Returns a list of result dicts.
  """
  examples = list(examples)
  worker = functools.partial(_evaluate_tuple, rate=rate, metrics=tuple(metrics),
                             vocoder_config=vocoder_config)
  num_workers = num_workers or os.cpu_count() or 1
  bar = functools.partial(tqdm.tqdm, total=len(examples), disable=not progress,
                          desc="evaluating")
  if num_workers == 1 or len(examples) <= 1:
    return [worker(example) for example in bar(examples)]
  with single_threaded_pool(min(num_workers, len(examples))) as pool:
    return list(bar(pool.imap(worker, examples, chunksize=1)))


def mean_ci95(values):
  """Mean and 95% confidence interval (Student t) of values, ignoring nan.

  Returns (mean, lo, hi); lo and hi are nan with fewer than two finite values.
  """
  values = np.asarray(values, np.float64).ravel()
  values = values[~np.isnan(values)]
  if values.size == 0:
    return math.nan, math.nan, math.nan
  mean = float(np.mean(values))
  if values.size < 2:
    return mean, math.nan, math.nan
  half_width = (scipy.stats.t.ppf(0.975, values.size - 1) * np.std(values, ddof=1)
                / math.sqrt(values.size))
  return mean, mean - half_width, mean + half_width


__all__ = [
    "sisdr", "snr", "sisdr_improvement", "snr_improvement", "bss_eval_sources", "sdr", "stoi",
    "pesq", "interaural_level_difference_db", "delta_ild_db", "interaural_time_difference_ms",
    "delta_itd_ms", "align_by_sisdr", "evaluate_example", "register_metric", "metric_names",
    "import_metric_modules", "evaluate_many", "mean_ci95",
]
