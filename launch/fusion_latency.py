"""Algorithmic latency, parameter count and CPU real-time factor of fusion models.

  JAX_PLATFORMS=cpu python launch/fusion_latency.py --tokens=gpu,causal,double \\
      --encoders=learned,stft [--seconds=4] [--repeats=5]

Algorithmic latency: an output sample depends on input up to one encoder window (L samples)
ahead (tests/test_fusion.py checks it), so the latency is L / sample rate. The real-time factor
is the median wall time of one jitted forward pass over `--seconds` of two-channel audio
(batch 1, whole segment at once; compilation excluded) divided by `--seconds`: the compute
cost of offline processing, not of a frame-by-frame streaming implementation (which this
project does not have).
"""

import os
import platform
import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("tokens", "gpu,causal,double", "configs/fusion.py tokens besides the encoder")
flags.DEFINE_list("encoders", ["learned", "stft"], "encoders to measure")
flags.DEFINE_float("seconds", 4.0, "audio per forward pass")
flags.DEFINE_integer("repeats", 5, "timed passes (median reported)")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from spatialsep_jax import models
  from spatialsep_jax.configs import fusion as fusion_configs
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
  for encoder in FLAGS.encoders:
    config = fusion_configs.get_config(f"{FLAGS.tokens},{encoder}")
    model = models.build_model(config)
    rate = int(config.data.sample_rate)
    samples = int(FLAGS.seconds * rate)
    mixture = jax.random.normal(jax.random.key(0), (1, samples, 2), jnp.float32) * 0.1
    variables = jax.jit(model.init)(jax.random.key(1), mixture)
    forward = jax.jit(model.estimates)
    forward(variables, mixture).block_until_ready()
    times = []
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      forward(variables, mixture).block_until_ready()
      times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{config.name}: {models.count_params(variables['params']):,} parameters, "
          f"algorithmic latency {config.model.kernel} samples = "
          f"{1e3 * config.model.kernel / rate:.1f} ms, CPU real-time factor "
          f"{median / FLAGS.seconds:.3f} (median {median * 1e3:.0f} ms for {FLAGS.seconds:g} s, "
          f"{FLAGS.repeats} passes, min {min(times) * 1e3:.0f} ms)")


if __name__ == "__main__":
  app.run(main)
