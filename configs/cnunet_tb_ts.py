"""CNUNet ladder rung 'tb_ts' (seed 003); sizes, task and loss in configs/cnunet_configs.py."""

from spatialsep_jax.configs import cnunet_configs


def get_config(arg: str = ""):
  return cnunet_configs.cnunet_config("tb_ts", arg)
