"""One CI's back mic + T-mic: implicit cues only (the study's unilateral input).

Usage: `python launch/train.py --config=configs/unilateral.py[:smoke|:gpu][,mono|uni|uni_fb|bi]`.
"""

from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  return study_configs.study_config(
      "unilateral", arg, mics="uni", features=(), fusion="concat")
