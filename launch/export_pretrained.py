"""Export a trained run as a pretrained separator folder (the agreed format).

  python launch/export_pretrained.py --workdir=runs/study/bilateral --out=pretrained/bilateral \
      [--entry=bilateral] [--variant=gpu] [--set=data.num_examples.train=8000 ...] \
      [--checkpoint=best] [--note="what the run was"]

Writes to --out:
  config.json     {"name", "config_file", "config_arg", "config": config.to_dict(), "fingerprint"}
  params.msgpack  flax.serialization.msgpack_serialize of the `params` collection, every
                  floating array cast to float16
  metrics.json    the test-split summary of the exported checkpoint (means, 95% CIs, n) with
                  the split, data and budget it was measured on
The run's configuration is rebuilt as configs/<entry name>.py's get_config(<variant,tokens>)
with the --set overrides (as launch/study.py builds it; --entry defaults to the run's
study_entry.txt) and must have the run's fingerprint, so the folder describes what was
trained. MODEL_CARD.md is written by hand beside these files.
"""

import glob
import json
import os

from spatialsep_jax.launch import common
from absl import flags

flags.DEFINE_string("workdir", None, "the trained run's folder", required=True)
flags.DEFINE_string("out", None, "the folder to write", required=True)
flags.DEFINE_string("entry", None, "configs/<name>.py entry with '+'-joined tokens, e.g. "
                    "ipd:cossin+zeroinit (default: <workdir>/study_entry.txt)")
flags.DEFINE_string("variant", "gpu", "size variant the run was trained with")
flags.DEFINE_multi_string("set", [], "the field overrides the run was trained with")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint to export")
FLAGS = flags.FLAGS


def float16_tree(params):
  import jax
  import numpy as np

  def cast(leaf):
    leaf = np.asarray(leaf)
    return leaf.astype(np.float16) if np.issubdtype(leaf.dtype, np.floating) else leaf

  return jax.tree_util.tree_map(cast, params)


def _eval_summary(workdir: str, step: int) -> tuple[str | None, dict | None]:
  paths = sorted(glob.glob(os.path.join(workdir, "eval", f"*-step{step}", "summary.json")))
  if not paths:
    return None, None
  with open(paths[-1]) as f:
    return os.path.dirname(paths[-1]), json.load(f)


def _rooms_note(data) -> str:
  if "room_split" not in data:
    return ("this version's renderer draws every split's rooms from the same bank: test "
            "mixtures reuse training rooms (only speakers are disjoint)")
  if data.get("share_rooms_across_splits", False):
    return "rooms shared across splits (ablation setting): test rooms are training rooms"
  return (f"room-disjoint splits: the {int(data.num_rooms)} simulated rooms are partitioned "
          f"{tuple(data.room_split)} into train/val/test, so test rooms were never trained on")


def export(config, entry: str, workdir: str, out: str, which: str = "best") -> dict:
  import flax
  import jax
  from spatialsep_jax import evaluation, train

  name, arg = common.split_entry(entry, FLAGS.variant)
  _, params, step = evaluation.load_trained(config, workdir, which)
  params = float16_tree(jax.device_get(params))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "params.msgpack"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(params))
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"name": config.name, "config_file": f"configs/{name}.py", "config_arg": arg,
               "config": config.to_dict(), "fingerprint": train.config_fingerprint(config)},
              f, indent=1, default=list)
  eval_dir, summary = _eval_summary(workdir, int(step))
  train_summary = {}
  if os.path.exists(os.path.join(workdir, "train_summary.json")):
    with open(os.path.join(workdir, "train_summary.json")) as f:
      train_summary = json.load(f)
  data = config.data
  metrics = {
      "checkpoint": which, "step": int(step),
      "split": config.eval.split,
      "num_test_mixtures": summary.get("num_examples") if summary else None,
      "overall": summary.get("overall") if summary else None,
      "ci": "95% Student-t interval over test mixtures (one training seed)",
      "data": {"num_examples": data.num_examples.to_dict(), "num_rooms": int(data.num_rooms),
               "sample_rate": int(data.sample_rate),
               "segment_seconds": float(data.segment_seconds),
               "input_channels": list(data.input_channels), "seed": int(config.seed),
               "room_split": list(data.get("room_split", ())),
               "share_rooms_across_splits": bool(data.get("share_rooms_across_splits", True)),
               "rooms_note": _rooms_note(data)},
      "budget": {"num_steps": int(config.train.num_steps),
                 "batch_size": int(config.train.batch_size),
                 "learning_rate": float(config.optim.learning_rate),
                 "decay_every_steps": int(config.optim.decay_every_steps),
                 "best_val": train_summary.get("best")},
      "eval_dir": os.path.relpath(eval_dir, workdir) if eval_dir else None,
      "num_params": int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))),
  }
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1, default=float)
  return metrics


def main(argv):
  del argv
  common.setup_logging()
  entry = FLAGS.entry
  if entry is None:
    path = os.path.join(FLAGS.workdir, "study_entry.txt")
    if not os.path.exists(path):
      common.fail(f"no --entry and no {path}; name the configuration, e.g. --entry=bilateral")
    entry = open(path).read().strip()
  config = common.load_named_config(entry, FLAGS.variant, FLAGS.set)
  metrics = common.call_or_fail(export, config, entry, FLAGS.workdir, FLAGS.out, FLAGS.checkpoint)
  overall = (metrics["overall"] or {}).get("sisdr_improvement", {})
  print(f"exported {config.name} step {metrics['step']} ({metrics['num_params']} params) to "
        f"{FLAGS.out}; test SI-SDRi {overall.get('mean', float('nan')):.2f} "
        f"{overall.get('ci95')}")


if __name__ == "__main__":
  common.run(main)
