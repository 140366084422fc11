"""NASS (seed 002) on a SepFormer-style dual-path transformer, one T-mic, noisy scenes.

Usage: `python launch/train.py --config=configs/nass_dualpath.py[:smoke|:gpu][,baseline|nopcl][,lambda1,m1,n2s]`
(tokens: configs/nass_configs.py).
"""

from spatialsep_jax.configs import nass_configs


def get_config(arg: str = ""):
  return nass_configs.nass_config("nass_dualpath", arg, mics="mono", backbone="dual_path_transformer")
