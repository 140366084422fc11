"""Two channels + ILD map concatenated to the encoder output.

Usage: `python launch/train.py --config=configs/ild.py[:smoke|:gpu][,mono|uni|uni_fb|bi]`.
"""

from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  return study_configs.study_config(
      "ild", arg, mics="bi", features=('ild',), fusion="concat")
