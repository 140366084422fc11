"""Per-layer activation variance of both sides of trained fusion runs (seed 004's "equalised
activation variance" observation), at initialisation and after training.

  python launch/fusion_probe.py --runs=runs/fusion --out=variances.json --variant=gpu \
      [--set=a.b=value ...] [--examples=16]

For every run folder under --runs made by launch/study.py (its `study_entry.txt` names the
configs/ entry; --variant and --set as given to study.py), the best checkpoint's variables and
the run's initial variables (the trainer's own init, same seed) are applied to the first
--examples test mixtures; for each stage of each side the variance over frames and channels is
averaged over the examples. The JSON maps run -> {"trained"|"initial": {"<side>/<stage>": v}}.
"""

import json
import os

from absl import app, flags

from spatialsep_jax.launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", "runs/fusion", "folder of fusion run folders")
flags.DEFINE_string("out", "variances.json", "output JSON")
flags.DEFINE_integer("examples", 16, "test mixtures per run")
flags.DEFINE_string("variant", "", "config variant the runs were trained with")
flags.DEFINE_multi_string("set", [], "field overrides the runs were trained with")


def run_variances(workdir: str, num_examples: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from data_pipeline import dataset
  from data_pipeline import loader as loader_lib
  from spatialsep_jax import evaluation
  from spatialsep_jax.models import fusion
  with open(os.path.join(workdir, "study_entry.txt")) as f:
    entry = f.read().strip()
  config = common.load_named_config(entry, FLAGS.variant, FLAGS.set)
  programs, variables, _ = evaluation.load_trained(config, workdir)
  batch = next(iter(loader_lib.make_loader(
      config, dataset.shards_dir(config), "test", train=False, batch_size=num_examples,
      process_index=0, process_count=1)))
  mixture = jnp.asarray(np.asarray(batch["mixture"], np.float32))
  module = programs.model.module
  state = programs.init(jax.random.key(config.seed))
  initial = {"params": state.params, **state.model_state}
  result = {}
  for label, values in (("trained", variables), ("initial", initial)):
    per_example = fusion.layer_variances(module, values, mixture)
    result[label] = {name: float(np.mean(v)) for name, v in per_example.items()}
  return result


def main(argv):
  del argv
  common.setup_logging()
  results = {}
  for name in sorted(os.listdir(FLAGS.runs)):
    workdir = os.path.join(FLAGS.runs, name)
    if not os.path.exists(os.path.join(workdir, "study_entry.txt")):
      continue
    try:
      results[name] = run_variances(workdir, FLAGS.examples)
      print(f"[variances] {name}: {len(results[name]['trained'])} stages")
    except Exception as error:  # one broken run must not hide the others' figures
      print(f"[variances] {name}: failed ({type(error).__name__}: {error})")
  with open(FLAGS.out, "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  print(f"[variances] wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
