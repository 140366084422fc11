"""Evaluate a trained run on the test split:
`python launch/evaluate.py --config=configs/ipd.py --workdir=runs/ipd [--checkpoint=best|latest]`.

Writes <workdir>/eval/<split>-<checkpoint>-step<N>/{rows.csv, summary.json, summary.md,
sisdri_by_condition.png, examples/*.wav}. Interrupted evaluations resume from rows.csv.
"""

import common  # noqa: F401  (sets sys.path)
from absl import app, flags

_CONFIG = common.define_config_flags()
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint to evaluate")
flags.DEFINE_string("split", None, "split to evaluate (default config.eval.split)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  from spatialsep_jax import evaluation
  config = _CONFIG.value
  workdir = FLAGS.workdir or common.default_workdir(config)
  common.print_evaluation(common.call_or_fail(
      evaluation.run_evaluation, config, workdir, which=FLAGS.checkpoint, split=FLAGS.split))


if __name__ == "__main__":
  common.run(main)
