"""Left and right T-mics: implicit interaural cues only.

Usage: `python launch/train.py --config=configs/bilateral.py[:smoke|:gpu][,mono|uni|uni_fb|bi]`.
"""

from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  return study_configs.study_config(
      "bilateral", arg, mics="bi", features=(), fusion="concat")
