"""Frame-by-frame (hop-by-hop) inference of causal models with carried state.

A causal model (CNUNet, `models/cnunet.py`) exposes `core(waveform [B, K hop, M])`, whose
every look along time goes through `complex_layers.time_context`: with the "stream" collection
mutable, each operation keeps the frames it needs from the past (STFT overlap, convolution
buffers, running means, running norm sums, overlap-add tails) and the next call continues
from them. Feeding a signal in pieces of any whole number of hops therefore gives the offline
output (tested to float tolerance in tests/test_streaming.py).

  stream = Streamer(module, variables)                 # batch 1, one hop per call
  for hop_block in blocks:                             # [1, hop, M] each
    out = stream.process(hop_block)                    # [1, hop]: output `delay` samples late
  enhanced = enhance(module, variables, mixture)       # whole file in hop pieces, aligned

Latency. A hop of output leaves after a hop of input has arrived (buffering, `hop` samples)
and lags it by `module.delay = n_fft - hop` samples (the frame's look-back that overlap-add
must complete): algorithmic latency = n_fft samples (32 ms at 512 / 16 kHz), plus the compute
time of one call, which `measure` reports per hop on the current CPU.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from spatialsep_jax.models import complex_layers


def _core_step(module):
  def step(variables, stream_state, chunk):
    outputs, mutated = module.apply({**variables, complex_layers.STREAM: stream_state}, chunk,
                                    method="core", mutable=[complex_layers.STREAM])
    return outputs["estimates"][:, 0], mutated[complex_layers.STREAM]
  return jax.jit(step)


@dataclasses.dataclass
class Streamer:
  """Carried-state streaming of `module` (a CNUNet or any module with `core`, `hop`, `delay`).

  `variables` are the trained ones ("params" and any state, no "stream"); `hops_per_call` is
  the piece size `process` takes (1 = frame by frame)."""
  module: object
  variables: dict
  batch: int = 1
  hops_per_call: int = 1

  def __post_init__(self):
    self.variables = {k: v for k, v in self.variables.items() if k != complex_layers.STREAM}
    self.chunk = self.module.hop * self.hops_per_call
    self._step = _core_step(self.module)
    self.reset()

  def reset(self):
    """Fresh state (zeros = silence before the start)."""
    channels = self.module.num_input_channels
    chunk = jax.ShapeDtypeStruct((self.batch, self.chunk, channels), jnp.float32)
    shapes = jax.eval_shape(
        lambda v, c: self.module.apply(v, c, method="core", mutable=[complex_layers.STREAM])[1],
        self.variables, chunk)
    self.state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                              shapes[complex_layers.STREAM])

  def process(self, chunk) -> np.ndarray:
    """[B, hops_per_call * hop, M] input -> [B, hops_per_call * hop] output (`delay` late)."""
    chunk = jnp.asarray(chunk, jnp.float32)
    if chunk.shape != (self.batch, self.chunk, self.module.num_input_channels):
      raise ValueError(f"process takes [{self.batch}, {self.chunk}, "
                       f"{self.module.num_input_channels}] pieces, got {tuple(chunk.shape)}")
    out, self.state = self._step(self.variables, self.state, chunk)
    return out


def enhance(module, variables, mixture, hops_per_call: int = 1) -> np.ndarray:
  """Stream `mixture` [B, T, M] through `module` piece by piece; [B, T] aligned with the input,
  equal to the offline `module.apply(variables, mixture)["estimates"][:, 0]`."""
  mixture = np.asarray(mixture, np.float32)
  batch, length, _ = mixture.shape
  hop, delay = module.hop, module.delay
  chunk = hop * hops_per_call
  total = -(-(length + delay) // chunk) * chunk       # whole pieces covering T + delay
  padded = np.pad(mixture, ((0, 0), (0, total - length), (0, 0)))
  stream = Streamer(module, variables, batch=batch, hops_per_call=hops_per_call)
  pieces = [np.asarray(stream.process(padded[:, i:i + chunk])) for i in range(0, total, chunk)]
  return np.concatenate(pieces, axis=1)[:, delay:delay + length]


def latency_ms(module, sample_rate: int, hops_per_call: int = 1) -> float:
  """Algorithmic latency: the piece buffered before a call (`hops_per_call` hops) + `delay`
  samples; n_fft samples frame by frame."""
  return 1000.0 * (hops_per_call * module.hop + module.delay) / sample_rate


def measure(module, variables, sample_rate: int, seconds: float = 5.0, warmup: int = 5,
            hops_per_call: int = 1) -> dict:
  """Compute time of one streaming call on this machine (jitted, batch 1, `hops_per_call`
  hops per call): per call and per hop in ms, real-time factor (compute / audio duration of
  the piece), algorithmic latency (which grows with the piece). Run it in a process pinned to
  one core (`taskset -c 0`, XLA_FLAGS single-threaded Eigen) for the one-core figure."""
  stream = Streamer(module, variables, hops_per_call=hops_per_call)
  piece_len = module.hop * hops_per_call
  rng = np.random.default_rng(0)
  calls = int(np.ceil(seconds * sample_rate / piece_len))
  signal = 0.1 * rng.standard_normal((1, (calls + warmup) * piece_len,
                                      module.num_input_channels)).astype(np.float32)
  for i in range(warmup):
    jax.block_until_ready(stream.process(signal[:, i * piece_len:(i + 1) * piece_len]))
  times = []
  for i in range(warmup, warmup + calls):
    piece = signal[:, i * piece_len:(i + 1) * piece_len]
    start = time.perf_counter()
    jax.block_until_ready(stream.process(piece))
    times.append(time.perf_counter() - start)
  times = np.asarray(times) / hops_per_call     # per hop
  hop_ms = 1000.0 * module.hop / sample_rate
  return {"hop_ms": hop_ms, "hops_per_call": hops_per_call,
          "compute_ms_median": float(np.median(times) * 1e3),
          "compute_ms_p95": float(np.percentile(times, 95) * 1e3),
          "rtf_median": float(np.median(times) * 1e3 / hop_ms),
          "algorithmic_latency_ms": latency_ms(module, sample_rate, hops_per_call),
          "hops": int(calls * hops_per_call),
          "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
          else None}


__all__ = ["Streamer", "enhance", "latency_ms", "measure"]
