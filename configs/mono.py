"""One T-mic, no spatial features (the study's monaural baseline).

Usage: `python launch/train.py --config=configs/mono.py[:smoke|:gpu][,mono|uni|uni_fb|bi]`.
"""

from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  return study_configs.study_config(
      "mono", arg, mics="mono", features=(), fusion="concat")
