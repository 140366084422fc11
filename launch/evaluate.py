"""Evaluate a trained run on the test split:
`python launch/evaluate.py --config=configs/ipd.py --workdir=runs/ipd [--checkpoint=best|latest]`,
or a shipped model on a config's data: `... --config=configs/bilateral.py --pretrained=bilateral`.

Writes <workdir>/eval/<split>-<checkpoint>-step<N>/{rows.csv, summary.json, summary.md,
sisdri_by_condition.png, examples/*.wav}. Interrupted evaluations resume from rows.csv. One
evaluation at a time per workdir (a lock file, `<workdir>/.evaluate.lock`, names the holder);
training the same workdir meanwhile is allowed (evaluation only reads its checkpoints).

With `--config.eval.save_estimates=True` every scored estimate is also kept, one FLAC file per
mixture, in `<eval folder>/estimates/`. Those estimates are scored again, on another machine
and with other metrics (PESQ, DNSMOS where the first machine had none), by
`python launch/evaluate.py --config=<the same config>[ --config.eval.metrics=...] --estimates=DIR
[--out=FOLDER]`: the split is rendered here from the config (same scenes: seeded by split and
index), no checkpoint is read, and rows and summary go to FOLDER (default
`<DIR>/../rescored-<split>`, beside the original rows, which are never overwritten; they are
checked against the rescored SI-SDR, 0.05 dB). Examples without an estimate are skipped and
counted; a rescoring resumes like an evaluation and holds `<FOLDER>/.evaluate.lock`.
"""

import os

from spatialsep_jax.launch import common
from absl import flags

_CONFIG = common.define_config_flags()
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint to evaluate")
flags.DEFINE_string("split", None, "split to evaluate (default config.eval.split)")
flags.DEFINE_string("pretrained", None, "score a shipped model (pretrained/<name>) on this "
                    "config's data instead of a run's checkpoint")
flags.DEFINE_string("estimates", None, "score the estimates an evaluation saved "
                    "(<eval folder>/estimates, eval.save_estimates) instead of a checkpoint")
flags.DEFINE_string("out", None, "with --estimates: the folder of the rescored rows and summary "
                    "(default <estimates>/../rescored-<split>)")
FLAGS = flags.FLAGS

SPLITS = ("train", "val", "test")


def main(argv):
  if len(argv) > 1:
    common.fail(f"unexpected arguments {argv[1:]}; flags are --config, --workdir, --checkpoint, "
                "--split, --pretrained, --estimates, --out")
  common.setup_logging()
  config = _CONFIG.value
  if config is None:
    common.fail("give the run's --config=configs/<name>.py[:variant] (and --workdir)")
  split = FLAGS.split or config.eval.split
  if split not in SPLITS:
    common.fail(f"--split={split} is not a split; use one of {', '.join(SPLITS)}")
  if FLAGS.estimates and FLAGS.pretrained:
    common.fail("--estimates scores saved estimates and --pretrained a shipped model; give one")
  if FLAGS.out and not FLAGS.estimates:
    common.fail("--out is the folder of --estimates' results; evaluations of a checkpoint go to "
                "<workdir>/eval/")
  from spatialsep_jax import evaluation, io_safety
  if FLAGS.estimates:
    estimates = os.path.normpath(FLAGS.estimates)
    evaluation.check_estimates_dir(estimates)   # before the lock makes the output folder
    out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(estimates)),
                                    f"rescored-{split}")
    with io_safety.WorkdirLock(out, "evaluate"):
      summary = evaluation.evaluate_estimates(config, estimates, out, split=split)
    common.print_evaluation(summary)
    return
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
