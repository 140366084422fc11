"""Train a separator: `python launch/train.py --config=configs/ild_ipd.py [--workdir=runs/x]`.

Renders the embedded default data first when its shards are missing, resumes
from the workdir's latest checkpoint when there is one, and saves on SIGTERM.
"""

from spatialsep_jax.launch import common
from absl import app, flags

_CONFIG = common.define_config_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  from spatialsep_jax import train
  config = _CONFIG.value
  workdir = FLAGS.workdir or common.default_workdir(config)
  result = common.call_or_fail(train.train_and_evaluate, config, workdir,
                               errors=common.USER_ERRORS + (train.NonFiniteError,))
  best = result["best"]
  if "val_sisdri" in best:
    print(f"Done: step {result['step']}; best val SI-SDRi {best['val_sisdri']:.2f} dB "
          f"at step {best['step']}; checkpoints in {workdir}/checkpoints")
  if config.eval.after_training and not result["interrupted"]:
    import jax
    if jax.process_count() > 1:
      if jax.process_index() == 0:
        print(f"Multi-process run: evaluate it in one process with `python launch/evaluate.py "
              f"--config=<the same config> --workdir={workdir}`")
      return
    from spatialsep_jax import evaluation, separator
    common.print_evaluation(evaluation.run_evaluation(config, workdir, which="best"))
    if not config.eval.compare_pretrained:
      return
    shipped = evaluation.pretrained_for(config)
    if shipped:
      print(f"The shipped pretrained/{shipped} model on the same test split:")
      common.print_evaluation(evaluation.evaluate_pretrained(shipped, config, workdir))
    else:
      names = ", ".join(separator.pretrained_names()) or "none"
      print(f"No pretrained {config.name} model ships (pretrained/: {names}); score one of the "
            f"same channels on this test split with `python launch/evaluate.py "
            f"--config=configs/bilateral.py --pretrained=bilateral`")


if __name__ == "__main__":
  common.run(main)
