"""Two channels + IPD map concatenated to the encoder output (default: bilateral; ':uni' for one CI).

Usage: `python launch/train.py --config=configs/ipd.py[:smoke|:gpu][,mono|uni|uni_fb|bi]`.
"""

from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  return study_configs.study_config(
      "ipd", arg, mics="bi", features=('ipd',), fusion="concat")
