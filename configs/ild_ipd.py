"""Two channels + IPD and ILD maps (the project's main job).

Usage: `python launch/train.py --config=configs/ild_ipd.py[:smoke|:gpu][,mono|uni|uni_fb|bi]`.
"""

from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  return study_configs.study_config(
      "ild_ipd", arg, mics="bi", features=('ipd', 'ild'), fusion="concat")
