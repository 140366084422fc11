"""Where one streamed CNUNet frame's time goes on one CPU core (a probe for issue 18's RTF).

  taskset -c 1 python benchmarks/cpu/cnunet_stream_probe.py cnunet_tb

Times, at the authors' widths (`:gpu`, random weights, batch 1, one 16-ms hop per call, XLA
CPU single-threaded), the median call of `streaming.Streamer.process` as shipped (weights
passed as arguments) against the same step with the weights closed over as constants of the
jitted function. The difference is the cost of passing the weight arrays; the rest is the
one-frame program itself.
"""

import os
import sys
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from spatialsep_jax import models, streaming  # noqa: E402
from spatialsep_jax.launch import common  # noqa: E402
from spatialsep_jax.models import complex_layers  # noqa: E402


def median_ms(call, repeats: int = 60) -> float:
  for _ in range(5):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main(rung: str) -> None:
  module = models.build(common.load_named_config(rung, "gpu", {}))
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((1, module.hop, module.num_input_channels))))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                           shapes)
  stream = streaming.Streamer(module, variables)
  piece = jnp.asarray(0.1 * rng.standard_normal((1, module.hop, module.num_input_channels)),
                      jnp.float32)
  print(f"{rung}: {len(jax.tree.leaves(stream.variables))} weight arrays, "
        f"{len(jax.tree.leaves(stream.state))} stream-state buffers", flush=True)
  print(f"  as shipped (weights as arguments): {median_ms(lambda: stream.process(piece)):.1f} ms",
        flush=True)

  weights = stream.variables

  @jax.jit
  def closed_step(state, chunk):
    outputs, mutated = module.apply({**weights, complex_layers.STREAM: state}, chunk,
                                    method="core", mutable=[complex_layers.STREAM])
    return outputs["estimates"][:, 0], mutated[complex_layers.STREAM]

  carried = {"state": stream.state}

  def closed_call():
    out, carried["state"] = closed_step(carried["state"], piece)
    return out

  print(f"  weights closed over (constants): {median_ms(closed_call):.1f} ms", flush=True)


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "cnunet_tb")
