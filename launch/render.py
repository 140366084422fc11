"""Pre-render a config's train/val/test shards: `python launch/render.py --config=configs/mono.py[:smoke]`.

Resumable (complete shards whose size and sha256 match the manifest are kept; half-written,
missing, truncated or changed ones and a broken manifest.json are redone) and deterministic (the
same seed gives byte-identical shards). One renderer per shards folder (`.render.lock`: a second
one stops with one line naming the first). Prints a summary of the rendered data (counts,
speakers, rooms, RT60/TIR/separation ranges) at the end.
"""

from spatialsep_jax.launch import common
from absl import app, flags

_CONFIG = common.define_config_flags()
flags.DEFINE_integer("num_workers", None, "render processes (default: all cores)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  from data_pipeline import dataset, summarize
  from spatialsep_jax import config_checks
  config = _CONFIG.value
  common.call_or_fail(config_checks.check_data_config, config)
  directory = FLAGS.workdir or dataset.shards_dir(config)
  common.call_or_fail(dataset.render, config, directory, num_workers=FLAGS.num_workers)
  print(summarize.summary_text(config, directory))


if __name__ == "__main__":
  common.run(main)
