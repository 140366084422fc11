"""Store the bottleneck latents of a trained CNUNet stage-1 run for stage 2 (CNUNet-TB-TS):

  python launch/cnunet_latents.py --config=configs/cnunet_tb_stage1.py --workdir=runs/stage1 \
      --out=runs/stage1/latents
  python launch/train.py --config=configs/cnunet_tb_ts.py --config.data.cnunet_latents=runs/stage1/latents

One latent per example of the train and val splits, keyed by example_id
(spatialsep_jax/latent_store.py); stage 2 must use the same data and model widths.
"""

from spatialsep_jax.launch import common
from absl import flags

_CONFIG = common.define_config_flags()
flags.DEFINE_string("out", "", "folder for latents_{train,val}.npy (default <workdir>/latents)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  config = _CONFIG.value
  if config is None:
    common.fail("give --config=configs/cnunet_tb_stage1.py[:variant] and --workdir")
  import os
  from data_pipeline import dataset
  from spatialsep_jax import latent_store
  workdir = FLAGS.workdir or common.default_workdir(config)
  config.data.shards_dir = dataset.ensure_dataset(config)
  out = FLAGS.out or os.path.join(workdir, "latents")
  info = latent_store.store(config, workdir, out)
  print(f"wrote {out}: {info['splits']}")


if __name__ == "__main__":
  common.run(main)
