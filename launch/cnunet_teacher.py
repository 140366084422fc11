"""Train the substitute teacher of CNUNet stage 1 (NOT WavLM: a non-causal speech encoder
trained here on clean speech alone by masked-frame reconstruction, spatialsep_jax/teachers.py):

  python launch/cnunet_teacher.py --config=configs/cnunet_tb_stage1.py --steps=2000 \
      --out=pretrained/teachers/speech_encoder_substitute.npz

It reads the clean targets (`sources`) of the config's training split (rendered if missing).
"""

from spatialsep_jax.launch import common
from absl import flags

_CONFIG = common.define_config_flags()
flags.DEFINE_integer("steps", 2000, "training steps")
flags.DEFINE_integer("batch_size", 16, "utterances per step")
flags.DEFINE_string("out", "", "the .npz to write (default teachers.DEFAULT_PATH)")
flags.DEFINE_list("settings", [], "teachers.SubstituteSettings fields as name=value, e.g. "
                  "dim=64,layers=3 (default: its defaults)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  config = _CONFIG.value
  if config is None:
    common.fail("give --config=configs/cnunet_tb_stage1.py[:variant]")
  import dataclasses
  from data_pipeline import dataset
  from spatialsep_jax import teachers
  shards_dir = dataset.ensure_dataset(config)
  out = FLAGS.out or teachers.DEFAULT_PATH
  fields = {f.name: f.type for f in dataclasses.fields(teachers.SubstituteSettings)}
  overrides = {}
  for item in FLAGS.settings:
    name, _, value = item.partition("=")
    if name not in fields:
      common.fail(f"--settings {item!r}: not a field of SubstituteSettings ({', '.join(fields)})")
    overrides[name] = (float if "float" in str(fields[name]) else int)(value)
  settings = teachers.SubstituteSettings(**overrides)
  teachers.train_substitute(config, shards_dir, out, steps=FLAGS.steps,
                            batch_size=FLAGS.batch_size, settings=settings)
  print(f"wrote {out}")


if __name__ == "__main__":
  common.run(main)
