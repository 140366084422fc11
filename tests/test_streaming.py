"""Streaming CNUNet inference: hop-by-hop processing with carried state equals offline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax import streaming
from spatialsep_jax.models import cnunet

TINY = dict(n_fft=64, hop=32, depths=(1, 1), out_channels=4, mid_channels=2, dense_layers=1,
            attention_kernel=5, attention_window=8)


def _random_variables(module, mixture, seed=0):
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), mixture))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), shapes)


@pytest.mark.parametrize("norm,channels,hops_per_call", [("frame", 2, 1), ("cumulative", 1, 3)])
def test_streaming_equals_offline(norm, channels, hops_per_call):
  """Frame norm, two input channels, one hop per call; cumulative norm (running sums carried),
  three hops per call: the concatenated streamed outputs equal one offline call."""
  module = cnunet.CNUNet(**TINY, norm=norm, num_input_channels=channels)
  mixture = np.asarray(jax.random.normal(jax.random.key(3), (1, 410, channels)))
  variables = _random_variables(module, jnp.asarray(mixture))
  offline = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(mixture))["estimates"][:, 0])
  streamed = streaming.enhance(module, variables, mixture, hops_per_call=hops_per_call)
  assert streamed.shape == offline.shape == (1, 410)
  scale = np.abs(offline).max()
  assert scale > 1e-2
  np.testing.assert_allclose(streamed, offline, atol=2e-5 * scale if norm == "frame" else 2e-4 * scale)


def test_latency_is_the_window_and_a_wrong_piece_is_named():
  module = cnunet.CNUNet(**TINY)
  assert streaming.latency_ms(module, 8000) == pytest.approx(1000 * 64 / 8000)
  assert streaming.latency_ms(cnunet.CNUNet(), 16000) == pytest.approx(32.0)
  # four hops buffered per call: three more 16-ms hops wait before the first is processed
  assert streaming.latency_ms(cnunet.CNUNet(), 16000, hops_per_call=4) == pytest.approx(80.0)
  variables = _random_variables(module, jnp.zeros((1, 64, 1)))
  stream = streaming.Streamer(module, variables)
  with pytest.raises(ValueError, match=r"process takes \[1, 32, 1\] pieces"):
    stream.process(np.zeros((1, 31, 1), np.float32))
