"""Chunked overlap-add separation of long recordings: exact reconstruction in a closed-form case."""

import numpy as np
import pytest

from spatialsep_jax import inference


@pytest.mark.parametrize("length", [1000, 2048, 5123])
def test_separate_long_reassembles_chunks_with_a_consistent_talker_order(length):
  rng = np.random.default_rng(length)
  audio = rng.normal(size=(length, 2)).astype(np.float32)
  swaps = iter(rng.integers(0, 2, size=1000))

  def separate_chunk(chunks):  # [B, seg, C] -> [B, 2, seg], outputs in a random order per chunk
    outs = []
    for chunk in chunks:
      pair = [chunk[:, 0], -0.5 * chunk[:, 1]]
      outs.append(pair[::-1] if next(swaps) else pair)
    return np.stack(outs)

  result = inference.separate_long(separate_chunk, audio, segment=256, batch_size=3)
  assert result.shape == (2, length)
  first = 0 if np.dot(result[0], audio[:, 0]) > np.dot(result[1], audio[:, 0]) else 1
  np.testing.assert_allclose(result[first], audio[:, 0], atol=1e-5)
  np.testing.assert_allclose(result[1 - first], -0.5 * audio[:, 1], atol=1e-5)


def test_resample_round_trip_and_bad_rate():
  x = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)[:, None].astype(np.float32)
  up = inference.resample(x, 8000, 16000)
  assert up.shape == (16000, 1)
  back = inference.resample(up, 16000, 8000)
  np.testing.assert_allclose(back[100:-100], x[100:-100], atol=1e-2)
  with pytest.raises(ValueError, match="rates must be positive"):
    inference.resample(x, 0, 8000)


def _talkers(length, rate=8000, seed=0):
  """Two 'talkers' with different spectra (low-passed and high-passed noise bursts) and
  stretches where both are silent for longer than a chunk overlap."""
  import scipy.signal
  rng = np.random.default_rng(seed)
  low = scipy.signal.lfilter(*scipy.signal.butter(4, 800, fs=rate), rng.normal(size=length))
  high = scipy.signal.lfilter(*scipy.signal.butter(4, 2000, "high", fs=rate),
                              rng.normal(size=length))
  gate_a = np.zeros(length)
  gate_b = np.zeros(length)
  period = 2400  # 0.3 s: A talks, B talks, both pause 900 samples (> the 128-sample hop)
  for start in range(0, length, period):
    gate_a[start:start + 900] = 1
    gate_b[start + 600:start + 1500] = 1
  return np.stack([low * gate_a, 0.5 * high * gate_b]).astype(np.float32)


def _shuffling_oracle(sources_per_chunk_seed, num=2):
  """separate_chunk returning the chunk's true sources (channels of the input) in a random
  order per chunk, each at an arbitrary scale (as a scale-invariant model would)."""
  rng = np.random.default_rng(sources_per_chunk_seed)

  def separate_chunk(chunks):
    outs = []
    for chunk in chunks:
      pair = [chunk[:, s] for s in range(num)]
      order = rng.permutation(num)
      outs.append(np.stack([pair[o] for o in order]))
    return np.stack(outs)

  return separate_chunk


def test_long_recording_keeps_each_talker_in_one_stream_across_silent_pauses():
  sources = _talkers(24000)
  result = inference.separate_long(_shuffling_oracle(3), sources.T, segment=256, batch_size=8)
  first = int(np.dot(result[1], sources[0]) > np.dot(result[0], sources[0]))
  np.testing.assert_allclose(result[first], sources[0], atol=1e-4)
  np.testing.assert_allclose(result[1 - first], sources[1], atol=1e-4)


def test_three_outputs_are_ordered_by_optimal_assignment():
  rng = np.random.default_rng(5)
  sources = rng.normal(size=(3, 3000)).astype(np.float32)
  result = inference.separate_long(_shuffling_oracle(4, num=3), sources.T, segment=200)
  matched = np.argmax(result @ sources.T, axis=1)
  assert sorted(matched) == [0, 1, 2]
  np.testing.assert_allclose(result, sources[matched], atol=1e-4)


def test_level_gains_recover_each_streams_level_in_the_input():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 4000))
  gains = inference.level_gains(np.stack([a / 3, b * 5]), a + b)
  np.testing.assert_allclose(gains, [3.0, 0.2], rtol=1e-2)
  # A sign-flipped stream gets a negative gain: the output has the input's polarity.
  flipped = inference.level_gains(np.stack([-a, b]), a + b)
  np.testing.assert_allclose(flipped, [-1.0, 1.0], rtol=1e-6)
  assert inference.level_gains(np.stack([a, 0 * b]), a).tolist() == [1.0, 0.0]


def test_separate_recording_level_silence_nan_and_rates(caplog):
  import logging
  sources = _talkers(16000, rate=16000)
  mixture = sources.sum(axis=0)

  def separate_chunk(chunks):  # a scale-free "model": outputs at unit peak, fixed order
    low = np.stack([inference.resample(c, 8000, 8000)[:, 0] for c in chunks])
    out = np.stack([low, low * 0.5], axis=1)
    return out / np.maximum(np.abs(out).max(axis=-1, keepdims=True), 1e-9)

  loud = inference.separate_recording(separate_chunk, mixture[:, None], 16000, 8000, 400, 2)
  quiet = inference.separate_recording(separate_chunk, 0.01 * mixture[:, None], 16000, 8000,
                                       400, 2)
  assert loud.shape == (2, 16000) and np.all(np.isfinite(loud))
  np.testing.assert_allclose(quiet, 0.01 * loud, atol=1e-6)        # level follows the input
  assert np.abs(loud.sum(axis=0)).max() < 2 * np.abs(mixture).max()  # never blown up
  called = []
  with caplog.at_level(logging.WARNING):
    silent = inference.separate_recording(lambda x: called.append(1), np.zeros((4000, 1)),
                                          8000, 8000, 400, 2, where="quiet.wav")
  assert not called and silent.shape == (2, 4000) and not silent.any()
  assert "quiet.wav is silent" in caplog.text
  bad = mixture[:, None].copy()
  bad[100] = np.nan
  with pytest.raises(ValueError, match="holds 1 NaN/inf samples"):
    inference.separate_recording(separate_chunk, bad, 16000, 8000, 400, 2)


def test_dnsmos_scores_a_short_signal_in_range_and_deterministically():
  pytest.importorskip("speechmos")
  from spatialsep_jax import dnsmos
  rate = 8000
  t = np.arange(2 * rate) / rate
  voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
  signal = (0.2 * voiced * (np.sin(2 * np.pi * 2 * t) > -0.3)
            + 0.01 * np.random.default_rng(0).normal(size=t.size)).astype(np.float32)
  first = dnsmos.score(signal, rate)
  assert set(first) == {"sig", "bak", "ovrl", "p808", "seconds"} and first["seconds"] == 2.0
  assert all(0.5 <= first[k] <= 5.5 for k in ("sig", "bak", "ovrl", "p808")), first
  assert dnsmos.score(signal, rate) == first
  with pytest.raises(ValueError, match="silent"):
    dnsmos.score(np.zeros(rate, np.float32), rate)
  with pytest.raises(ValueError, match="one channel"):
    dnsmos.score(np.zeros((rate, 2), np.float32), rate)
