import math
import warnings

import numpy as np
import pesq as pesq_lib
import pystoi
import pytest
import scipy.signal
import scipy.stats

from spatialsep_jax import metrics


def _speech_like(rate, seconds=2.0, seed=0):
  """Harmonic complex with gliding F0 and syllable-rate amplitude modulation."""
  t = np.arange(int(seconds * rate)) / rate
  f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t + seed)
  phase = 2 * np.pi * np.cumsum(f0) / rate
  harmonics = sum(np.sin(k * phase) / k for k in range(1, 20))
  return harmonics * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed))**2


def _with_orthogonal_noise(ref, snr_db, seed):
  rng = np.random.default_rng(seed)
  ref = ref - ref.mean()
  noise = rng.standard_normal(ref.shape)
  noise -= noise.mean()
  noise -= np.dot(noise, ref) / np.dot(ref, ref) * ref
  noise *= np.sqrt(np.sum(ref**2) / np.sum(noise**2) / 10**(snr_db / 10))
  return ref, noise


def test_sisdr_snr_closed_forms_and_improvements():
  ref, noise = _with_orthogonal_noise(np.random.default_rng(0).standard_normal(4000), 7.0, 1)
  assert abs(float(metrics.sisdr(2.0 * (ref + noise), ref)) - 7.0) < 0.01
  assert float(metrics.sisdr(-0.3 * ref, ref)) > 60.0
  assert abs(float(metrics.snr(ref + noise, ref)) - 7.0) < 0.01
  rng = np.random.default_rng(2)
  refs = rng.standard_normal((3, 2, 500)).astype(np.float32)
  mixture = refs.sum(1, keepdims=True)
  est = refs + 0.1 * rng.standard_normal(refs.shape).astype(np.float32)
  improvement = metrics.sisdr_improvement(est, refs, mixture)
  assert improvement.shape == (3, 2)
  expected = metrics.sisdr(est, refs) - metrics.sisdr(np.broadcast_to(mixture, refs.shape), refs)
  np.testing.assert_allclose(improvement, expected, atol=1e-5)
  np.testing.assert_allclose(
      metrics.snr_improvement(est, refs, mixture),
      metrics.snr(est, refs) - metrics.snr(np.broadcast_to(mixture, refs.shape), refs), atol=1e-5)


def _brute_force_bss_eval(est, ref, filter_length):
  num_sources, length = ref.shape
  padded = length + filter_length - 1

  def delayed_basis(indices):
    columns = []
    for i in indices:
      for tau in range(filter_length):
        column = np.zeros(padded)
        column[tau:tau + length] = ref[i]
        columns.append(column)
    return np.stack(columns, axis=1)

  results = []
  for k in range(num_sources):
    target_vector = np.concatenate([est[k], np.zeros(filter_length - 1)])
    project = lambda basis: basis @ np.linalg.lstsq(basis, target_vector, rcond=None)[0]
    target = project(delayed_basis([k]))
    everything = project(delayed_basis(range(num_sources)))
    interference, artifacts = everything - target, target_vector - everything
    db = lambda a, b: 10 * np.log10(np.sum(a**2) / np.sum(b**2))
    results.append((db(target, interference + artifacts), db(target, interference),
                    db(target + interference, artifacts)))
  return np.array(results).T


def test_bss_eval_matches_brute_force_least_squares():
  rng = np.random.default_rng(3)
  ref = rng.standard_normal((2, 300))
  est = np.stack([ref[0] + 0.3 * ref[1] + 0.2 * rng.standard_normal(300),
                  np.convolve(ref[1], [1.0, 0.5, -0.2])[:300] + 0.1 * rng.standard_normal(300)])
  got = np.array(metrics.bss_eval_sources(est, ref, filter_length=16))
  np.testing.assert_allclose(got, _brute_force_bss_eval(est, ref, 16), atol=1e-6)
  batched = np.array(metrics.bss_eval_sources(np.stack([est, ref + est]), ref, filter_length=16))
  np.testing.assert_allclose(batched[:, 0], got, atol=1e-9)
  np.testing.assert_allclose(batched[:, 1], metrics.bss_eval_sources(ref + est, ref, 16), atol=1e-9)


def test_sdr_of_scaled_reference_plus_noise_is_close_to_sisdr():
  ref, noise = _with_orthogonal_noise(_speech_like(8000, 2.0), 10.0, 4)
  value = metrics.sdr((0.5 * (ref + noise))[None], ref[None])[0]
  # The 512-tap filter absorbs about 512 / 16000 of the noise energy: ~0.14 dB.
  assert 10.0 <= value < 10.3
  assert np.isnan(metrics.sdr(ref[None], np.zeros((1, ref.size)))).all()


def test_sdr_matches_mir_eval_when_installed():
  separation = pytest.importorskip("mir_eval.separation")
  rng = np.random.default_rng(5)
  ref = rng.standard_normal((2, 3000))
  est = ref[::-1] * 0.2 + ref + 0.3 * rng.standard_normal((2, 3000))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected = separation.bss_eval_sources(ref, est, compute_permutation=False)[:3]
  np.testing.assert_allclose(metrics.bss_eval_sources(est, ref), expected, atol=1e-4)


def test_stoi_and_pesq_wrappers_equal_the_libraries():
  rate = 8000
  ref = _speech_like(rate, 3.0)
  est = ref + 0.1 * np.random.default_rng(6).standard_normal(ref.size)
  assert metrics.stoi(est, ref, rate) == pytest.approx(pystoi.stoi(ref, est, rate), abs=1e-12)
  assert metrics.stoi(est, ref, rate, extended=True) == pytest.approx(
      pystoi.stoi(ref, est, rate, extended=True), abs=1e-12)
  assert metrics.pesq(est, ref, rate) == pesq_lib.pesq(rate, ref, est, "nb")
  ref16 = _speech_like(16000, 3.0)
  est16 = ref16 + 0.1 * np.random.default_rng(7).standard_normal(ref16.size)
  assert metrics.pesq(est16, ref16, 16000) == pesq_lib.pesq(16000, ref16, est16, "wb")
  # 11025 Hz is nearest to 8 kHz: resampled by 320/441, then narrow-band.
  ref11 = _speech_like(11025, 3.0)
  est11 = ref11 + 0.1 * np.random.default_rng(8).standard_normal(ref11.size)
  down = lambda x: scipy.signal.resample_poly(x, 320, 441)
  assert metrics.pesq(est11, ref11, 11025) == pesq_lib.pesq(8000, down(ref11), down(est11), "nb")


def test_pesq_failure_returns_nan():
  assert math.isnan(metrics.pesq(np.zeros(16000), np.zeros(16000), 8000))
  assert math.isnan(metrics.pesq(np.full(16000, np.nan), _speech_like(8000), 8000))
  with pytest.raises(ValueError, match="mode"):
    metrics.pesq(np.zeros(16000), np.zeros(16000), 8000, mode="wb")


def test_interaural_errors_of_gain_and_delay():
  rng = np.random.default_rng(9)
  rate = 16000
  left = rng.standard_normal(8000)
  ref = np.stack([left, left], axis=-1)
  est = np.stack([left, left * 10**(-6.0 / 20)], axis=-1)
  assert abs(metrics.delta_ild_db(est, ref) - 6.0) < 1e-9
  per_band = metrics.delta_ild_db(est, ref, rate, band_edges_hz=[100, 1000, 4000])
  np.testing.assert_allclose(per_band, [6.0, 6.0], atol=1e-9)
  delay = 8  # 0.5 ms at 16 kHz, right channel lagging
  delayed = np.stack([left, np.concatenate([np.zeros(delay), left[:-delay]])], axis=-1)
  assert abs(metrics.interaural_time_difference_ms(delayed, rate) - 0.5) < 0.02
  assert abs(metrics.interaural_time_difference_ms(delayed[:, ::-1], rate) + 0.5) < 0.02
  assert abs(metrics.delta_itd_ms(delayed, ref, rate) - 0.5) < 0.02
  with pytest.raises(ValueError, match=r"\[T, 2\]"):
    metrics.delta_ild_db(left, left)


def _example(seed, rate=8000):
  rng = np.random.default_rng(seed)
  ref = np.stack([_speech_like(rate, 1.0, seed), _speech_like(rate, 1.0, seed + 1.7)[::-1]])
  mixture = ref.sum(0)
  est = ref[::-1] + 0.05 * rng.standard_normal(ref.shape)
  return est, ref, mixture


def test_evaluate_example_aligns_and_reports_improvements():
  est, ref, mixture = _example(0)
  result = metrics.evaluate_example(est, ref, mixture, 8000, metrics=("sisdr", "snr", "stoi"),
                                    vocoder_config={"num_channels": 8})
  np.testing.assert_array_equal(result["perm"], [1, 0])
  np.testing.assert_allclose(result["sisdr"], metrics.sisdr(est[::-1], ref), atol=1e-3)
  np.testing.assert_allclose(result["sisdr_mixture"],
                             metrics.sisdr(np.stack([mixture, mixture]), ref), atol=1e-3)
  for prefix in ("", "vocoded_"):
    for name in ("sisdr", "snr", "stoi"):
      np.testing.assert_allclose(result[f"{prefix}{name}_improvement"],
                                 result[f"{prefix}{name}"] - result[f"{prefix}{name}_mixture"])
  assert np.all(result["sisdr_improvement"] > 10)
  with pytest.raises(ValueError, match="unknown metrics"):
    metrics.evaluate_example(est, ref, mixture, 8000, metrics=("bleu",))


def test_evaluate_many_pool_matches_serial():
  examples = [_example(seed) for seed in range(2)]
  serial = metrics.evaluate_many(examples, 8000, metrics=("sisdr", "pesq"), num_workers=1,
                                 progress=False)
  pooled = metrics.evaluate_many(examples, 8000, metrics=("sisdr", "pesq"), num_workers=2,
                                 progress=False)
  for a, b in zip(serial, pooled):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_allclose(a[key], b[key])


def test_mean_ci95_matches_scipy_and_ignores_nan():
  values = np.array([1.0, 2.0, 4.0, np.nan, 7.0])
  finite = values[~np.isnan(values)]
  mean, lo, hi = metrics.mean_ci95(values)
  expected = scipy.stats.t.interval(0.95, finite.size - 1, loc=finite.mean(),
                                    scale=scipy.stats.sem(finite))
  assert mean == pytest.approx(finite.mean())
  assert (lo, hi) == pytest.approx(expected)
  assert math.isnan(metrics.mean_ci95([3.0, np.nan])[1])


def test_evaluation_sisdr_scores_silence_as_a_failure_and_matches_the_loss():
  from spatialsep_jax import losses
  rng = np.random.default_rng(7)
  ref = (0.05 * rng.standard_normal((2, 8000))).astype(np.float32)
  noise = (0.05 * rng.standard_normal((2, 8000))).astype(np.float32)
  cases = {"zero": np.zeros_like(ref), "vanishing": 1e-10 * ref, "perfect": ref,
           "small perfect": 1e-3 * ref, "white noise": noise}
  for name, est in cases.items():
    batched = np.asarray(metrics.sisdr(est, ref))
    per_example = metrics.evaluate_example(est, ref, ref.sum(0), 8000, metrics=("sisdr",),
                                           align=False)["sisdr"]
    loss = -np.asarray(losses.pairwise_neg_sisdr(est[None], ref[None]))[0]
    if "perfect" not in name:  # above ~100 dB only float32 rounding differs between paths
      np.testing.assert_allclose(per_example, batched, atol=1e-3, err_msg=name)
      np.testing.assert_allclose(np.diag(loss), batched, atol=1e-2, err_msg=name)
    else:
      assert (per_example > 40).all() and (np.diag(loss) > 40).all(), name
    if name in ("zero", "vanishing"):
      assert (batched <= -60).all(), (name, batched)
    elif "perfect" in name:
      assert (batched > 40).all(), (name, batched)
    else:
      assert (batched < -20).all(), (name, batched)


def test_registered_source_and_example_metrics_join_the_rows():
  from spatialsep_jax import config_checks
  from spatialsep_jax.configs import mono

  @metrics.register_metric("test_peak_ratio")
  def _peak_ratio(est, ref, rate):
    del rate
    return float(np.max(np.abs(est)) / np.max(np.abs(ref)))

  @metrics.register_metric("test_channel_energy", scope="example")
  def _channel_energy(est, ref, baseline, rate):
    del ref, baseline, rate
    return {"test_energy_first": float(np.sum(est[0] ** 2)),
            "test_energy_ratio": float(np.sum(est[0] ** 2) / np.sum(est[1] ** 2))}

  rng = np.random.default_rng(3)
  ref = rng.normal(size=(2, 800))
  est = ref[::-1] * np.array([[2.0], [0.5]])        # swapped order, known gains
  mixture = ref.sum(0)
  result = metrics.evaluate_example(est, ref, mixture, 8000,
                                    metrics=("sisdr", "test_peak_ratio", "test_channel_energy"),
                                    vocoder_config=None)
  np.testing.assert_array_equal(result["perm"], [1, 0])
  np.testing.assert_allclose(result["test_peak_ratio"], [0.5, 2.0])
  np.testing.assert_allclose(result["test_peak_ratio_mixture"],
                             np.max(np.abs(mixture)) / np.max(np.abs(ref), axis=1))
  # Example-scope metrics see the aligned estimates (reference order).
  np.testing.assert_allclose(result["test_energy_first"], np.sum((0.5 * ref[0]) ** 2))
  np.testing.assert_allclose(result["test_energy_ratio"],
                             np.sum((0.5 * ref[0]) ** 2) / np.sum((2.0 * ref[1]) ** 2))
  config = mono.get_config("smoke")
  config.eval.metrics = ("sisdr", "no_such_metric")
  with pytest.raises(config_checks.ConfigError, match="no_such_metric"):
    config_checks.check_config(config)
  config.eval.metrics = ("sisdr",)
  config.eval.metric_modules = ("no_such_module_here",)
  with pytest.raises(config_checks.ConfigError, match="metric_modules"):
    config_checks.check_config(config)
