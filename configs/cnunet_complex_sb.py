"""CNUNet ladder rung 'complex_sb' (seed 003); sizes, task and loss in configs/cnunet_configs.py."""

from spatialsep_jax.configs import cnunet_configs


def get_config(arg: str = ""):
  return cnunet_configs.cnunet_config("complex_sb", arg)
