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
