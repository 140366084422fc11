"""The study's input configurations as field overrides, and the config-file helper.

Every file in `configs/` is `get_config(arg)` where `arg` is a comma-separated
list of tokens: a size variant (`smoke`, `gpu`, see `base.py`), for the
feature configurations the microphone set (`mono`, `uni`, `uni_fb`, `bi`), and
`sepnorm` (the feature map gets its own layer norm: `model.feature_norm=separate`),
`cossin` (IPD as its cosine and sine, kind `ipd_cossin`, instead of the raw wrapped angle)
and `zeroinit` (the feature map through a zero-initialised 1x1 conv added to the bottleneck
input, so training starts from the feature-free model: `model.feature_init=zero`, a field
that only this token creates, so the fingerprints of every other configuration stay as
they were).
Example: `--config=configs/ipd.py:uni,smoke`.
"""

from spatialsep_jax.configs import base

# Microphone sets the study compares (names from data_pipeline.array.CHANNEL_NAMES).
MIC_SETS = {
    "mono": ("L_tmic",),
    "uni": ("L_back", "L_tmic"),       # one CI: back mic + T-mic (the authors' unilateral pair)
    "uni_fb": ("L_front", "L_back"),   # one CI: its two behind-the-ear mics
    "bi": ("L_tmic", "R_tmic"),        # both T-mics
}
SIZE_VARIANTS = ("smoke", "gpu")
MODEL_TOKENS = ("sepnorm", "cossin", "zeroinit")


def parse_arg(arg: str, default_mics: str):
  """Splits `arg` into (size variant, microphone-set name, model tokens)."""
  size, mics, model_tokens = "", default_mics, []
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if token in SIZE_VARIANTS:
      size = token
    elif token in MIC_SETS:
      mics = token
    elif token in MODEL_TOKENS:
      model_tokens.append(token)
    else:
      raise ValueError(
          f"unknown config token {token!r}; use any of "
          f"{SIZE_VARIANTS + tuple(MIC_SETS) + MODEL_TOKENS} separated by commas, e.g. ':bi,smoke'")
  return size, mics, model_tokens


def study_config(name: str, arg: str, *, mics: str, features=(), fusion="concat"):
  size, mics, model_tokens = parse_arg(arg, mics)
  config = base.get_base_config(size)
  config.name = name if mics == _DEFAULT_MICS.get(name, mics) else f"{name}_{mics}"
  config.data.input_channels = MIC_SETS[mics]
  config.model.features = tuple(features)
  config.model.fusion = fusion
  if "sepnorm" in model_tokens:
    if not features or fusion != "concat":
      raise ValueError(f"token 'sepnorm' normalises a concatenated feature map; {name} has none")
    config.model.feature_norm = "separate"
    config.name += "_sepnorm"
  if "cossin" in model_tokens:
    if "ipd" not in features:
      raise ValueError(f"token 'cossin' changes the IPD representation; {name} has no IPD")
    config.model.features = tuple("ipd_cossin" if kind == "ipd" else kind for kind in features)
    config.name += "_cossin"
  if "zeroinit" in model_tokens:
    if not features or fusion != "concat":
      raise ValueError(f"token 'zeroinit' replaces a concatenated feature map; {name} has none")
    config.model.feature_init = "zero"
    config.name += "_zeroinit"
  return config


# Which microphone set each configuration file uses when the arg names none.
_DEFAULT_MICS = {
    "mono": "mono", "unilateral": "uni", "bilateral": "bi",
    "ipd": "bi", "ild": "bi", "ild_ipd": "bi", "ipd_af": "bi",
}
