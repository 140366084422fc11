"""Two channels + IPD fused by a learned gate instead of concatenation (the study's 'AF' variants).

Usage: `python launch/train.py --config=configs/ipd_af.py[:smoke|:gpu][,mono|uni|uni_fb|bi]`.
"""

from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  return study_configs.study_config(
      "ipd_af", arg, mics="bi", features=('ipd',), fusion="attention")
