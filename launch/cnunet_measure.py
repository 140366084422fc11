"""Parameters, MACs per second of audio and streaming real-time factor of the CNUNet ladder.

  python launch/cnunet_measure.py --variant=gpu --out=reports/cnunet/measure.json
  taskset -c 0 python launch/cnunet_measure.py --variant=gpu --rtf=cnunet_tb --rtf_seconds=5

Parameters from the traced shapes; MACs = XLA's FLOP count / 2 of one offline forward pass on
one second of audio (batch 1, `config.data.sample_rate`), from the lowered program's cost
analysis (no compile). `--rtf` streams `--rtf_seconds` of noise hop by hop through the named
rung (random weights: compute does not depend on their values) with XLA's CPU backend held
to one thread, and reports compute time per hop, the real-time factor and the algorithmic
latency (`spatialsep_jax/streaming.py`).
"""

import json
import os
import sys

if "--rtf" in " ".join(sys.argv):  # one CPU thread for the one-core figure (before jax loads)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_cpu_multi_thread_eigen=false")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string("variant", "gpu", "config variant ('' for the CPU demo widths, gpu = the "
                    "authors' widths)")
flags.DEFINE_list("rungs", ["cnunet_real_sb", "cnunet_complex_sb", "cnunet_tb",
                            "cnunet_tb_stage1"], "config files to count")
flags.DEFINE_string("rtf", "", "a rung to stream on the CPU for the real-time factor")
flags.DEFINE_float("rtf_seconds", 5.0, "seconds of audio streamed for --rtf")
flags.DEFINE_list("rtf_hops_per_call", ["1"], "--rtf: hops per streaming call, one measurement "
                  "each (more hops per call: less compute per hop, more latency)")
flags.DEFINE_bool("rtf_offline", False, "--rtf: also time the offline forward of the same "
                  "audio in one call (the floor blocking can approach)")
flags.DEFINE_string("out", "", "JSON file for the figures (printed as well)")
FLAGS = flags.FLAGS


def count(config) -> dict:
  import jax
  import jax.numpy as jnp
  from spatialsep_jax import models
  module = models.build(config)
  rate = int(config.data.sample_rate)
  mixture = jnp.zeros((1, rate, len(config.data.input_channels)), jnp.float32)
  references = None
  if getattr(module, "teacher_dim", 0):
    references = {"sources": jnp.zeros((1, 1, rate), jnp.float32)}
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), mixture, False, references))
  params = models.count_params(variables["params"])
  lowered = jax.jit(lambda v, x: module.apply(v, x, False, references)["estimates"]).lower(
      variables, mixture)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  flops = float(cost["flops"])
  return {"params": params, "gflops_per_s_audio": flops / 1e9, "gmacs_per_s_audio": flops / 2e9}


def offline_rtf(module, variables, rate: int, seconds: float, repeats: int = 5) -> dict:
  """Median time of one jitted offline forward of `seconds` of noise (batch 1) / `seconds`."""
  import time
  import jax
  import numpy as np
  length = int(seconds * rate)
  signal = 0.1 * np.random.default_rng(0).standard_normal(
      (1, length, module.num_input_channels)).astype(np.float32)
  forward = jax.jit(lambda v, x: module.apply(v, x)["estimates"])
  jax.block_until_ready(forward(variables, signal))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, signal))
    times.append(time.perf_counter() - start)
  return {"seconds": seconds, "compute_s_median": float(np.median(times)),
          "rtf_median": float(np.median(times) / seconds)}


def main(argv):
  del argv
  from launch import common
  results = {}
  for rung in FLAGS.rungs:
    config = common.load_named_config(rung, FLAGS.variant)
    results[rung] = count(config)
    print(rung, results[rung], flush=True)
  if FLAGS.rtf:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from spatialsep_jax import models, streaming
    config = common.load_named_config(FLAGS.rtf, FLAGS.variant)
    module = models.build(config)
    rate = int(config.data.sample_rate)
    shapes = jax.eval_shape(lambda: module.init(
        jax.random.key(0), jnp.zeros((1, module.hop, module.num_input_channels))))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                             shapes)
    where = {"jax": jax.__version__, "backend": jax.default_backend(),
             "xla_flags": os.environ.get("XLA_FLAGS", "")}
    for hops in map(int, FLAGS.rtf_hops_per_call):
      key = f"rtf_{FLAGS.rtf}" + ("" if hops == 1 else f"_hops{hops}")
      results[key] = {**streaming.measure(module, variables, rate, FLAGS.rtf_seconds,
                                          hops_per_call=hops), **where}
      print(key, results[key], flush=True)
    if FLAGS.rtf_offline:
      results[f"offline_{FLAGS.rtf}"] = {**offline_rtf(module, variables, rate, FLAGS.rtf_seconds),
                                         **where}
      print(f"offline_{FLAGS.rtf}", results[f"offline_{FLAGS.rtf}"], flush=True)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
