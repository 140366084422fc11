"""Scores an exported NASS or baseline folder (launch/nass_tools.py export) on a rendered split,
with the run's own evaluation task, on this machine (float32 compute):

  python launch/nass_eval_export.py --export=EXPORT_DIR --entry=nass_sudormrf_mono[:baseline] \
      --shards=SHARDS --out=OUT [--set=a.b=v ...] [--max_examples=N]

Used when an accelerator call ended before its own test evaluation: the float16 parameters
that came back are scored here on the same test split (re-rendered from the same config: the
scenes are seeded by split and index, so test example k is the same mixture). Also counts
which output the noise-aware models use for the noise (the PIT pairing over talkers + noise).
"""

import argparse
import collections
import json
import os

import numpy as np


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--export", required=True)
  parser.add_argument("--entry", required=True)
  parser.add_argument("--variant", default="gpu")
  parser.add_argument("--shards", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--set", action="append", default=[])
  parser.add_argument("--max_examples", type=int, default=0)
  args = parser.parse_args(argv)
  import flax
  import jax
  import jax.numpy as jnp
  from data_pipeline import loader as loader_lib
  from spatialsep_jax import evaluation, losses
  from spatialsep_jax.launch import common
  config = common.load_named_config(args.entry, args.variant, args.set)
  if "pcl_head" in config.model:
    config.model.pcl_head = False       # the export has no head; inference never reads it
  config.model.dtype = "float32"
  config.eval.max_examples = args.max_examples
  config.eval.num_workers = 2
  with open(os.path.join(args.export, "params.msgpack"), "rb") as f:
    params = flax.serialization.msgpack_restore(f.read())
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  summary = evaluation.evaluate_variables(config, {"params": params}, args.out, split="test",
                                          shards_dir=args.shards, progress=False)
  print(json.dumps({k: summary["overall"][k] for k in ("sisdr_improvement", "sdr_improvement")
                    if k in summary["overall"]}, indent=1))
  if config.model.extra_outputs:
    from spatialsep_jax import models
    model = models.build_model(config)
    separate = jax.jit(lambda x: model.estimates({"params": params}, x))
    slots = collections.Counter()
    for batch in loader_lib.make_loader(config, args.shards, "test", train=False,
                                        batch_size=config.eval.batch_size, process_index=0,
                                        process_count=1):
      estimates = separate(jnp.asarray(batch["mixture"]))
      refs = jnp.concatenate([jnp.asarray(batch["sources"], jnp.float32),
                              jnp.asarray(batch["noise"], jnp.float32)[:, None]], axis=1)
      _, perm = losses.pit(losses.pairwise_neg_sisdr(estimates, refs))
      slots.update(int(i) for i in np.asarray(perm)[:, -1])
    print("noise estimate at output index:", dict(sorted(slots.items())))
    with open(os.path.join(args.out, "noise_slots.json"), "w") as f:
      json.dump(dict(sorted(slots.items())), f)


if __name__ == "__main__":
  main()
