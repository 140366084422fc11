"""Evaluate a trained run on the test split:
`python launch/evaluate.py --config=configs/ipd.py --workdir=runs/ipd [--checkpoint=best|latest]`,
or a shipped model on a config's data: `... --config=configs/bilateral.py --pretrained=bilateral`.

Writes <workdir>/eval/<split>-<checkpoint>-step<N>/{rows.csv, summary.json, summary.md,
sisdri_by_condition.png, examples/*.wav}. Interrupted evaluations resume from rows.csv. One
evaluation at a time per workdir (a lock file, `<workdir>/.evaluate.lock`, names the holder);
training the same workdir meanwhile is allowed (evaluation only reads its checkpoints).
"""

from spatialsep_jax.launch import common
from absl import flags

_CONFIG = common.define_config_flags()
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint to evaluate")
flags.DEFINE_string("split", None, "split to evaluate (default config.eval.split)")
flags.DEFINE_string("pretrained", None, "score a shipped model (pretrained/<name>) on this "
                    "config's data instead of a run's checkpoint")
FLAGS = flags.FLAGS

SPLITS = ("train", "val", "test")


def main(argv):
  if len(argv) > 1:
    common.fail(f"unexpected arguments {argv[1:]}; flags are --config, --workdir, --checkpoint, "
                "--split")
  common.setup_logging()
  config = _CONFIG.value
  if config is None:
    common.fail("give the run's --config=configs/<name>.py[:variant] (and --workdir)")
  split = FLAGS.split or config.eval.split
  if split not in SPLITS:
    common.fail(f"--split={split} is not a split; use one of {', '.join(SPLITS)}")
  from spatialsep_jax import evaluation, io_safety
  workdir = FLAGS.workdir or common.default_workdir(config)
  if FLAGS.pretrained:
    common.print_evaluation(evaluation.evaluate_pretrained(FLAGS.pretrained, config, workdir,
                                                           split=split))
    return
  with io_safety.WorkdirLock(workdir, "evaluate"):
    summary = evaluation.run_evaluation(config, workdir, which=FLAGS.checkpoint, split=split)
  common.print_evaluation(summary)


if __name__ == "__main__":
  common.run(main)
