"""Registers SuDoRM-RF (the study's separator, every input configuration) as `sudormrf`.

Every field of `SuDORMRF` that `config.model` has is passed through, so an option added to
the module needs no edit here.
"""

import dataclasses

import jax.numpy as jnp

from spatialsep_jax.features import FEATURE_KINDS
from spatialsep_jax.models import registry
from spatialsep_jax.models.layers import DEPTHWISE_IMPLS, NORM_IMPLS
from spatialsep_jax.models.sudormrf import REMAT_MODES, SuDORMRF

FUSIONS = ("concat", "attention")
FEATURE_NORMS = ("joint", "separate")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_FROM_DATA = ("num_sources", "num_input_channels", "dtype")


def _fail(message):
  raise registry.ModelConfigError(message)


def validate(config) -> None:
  model_config = config.model
  num_channels = len(config.data.input_channels)
  feature_kinds = tuple(model_config.features)
  unknown = [kind for kind in feature_kinds if kind not in FEATURE_KINDS]
  if unknown or len(set(feature_kinds)) != len(feature_kinds):
    _fail(f"config.model.features={feature_kinds} must be distinct kinds from {FEATURE_KINDS}")
  if feature_kinds and num_channels < 2:
    _fail(f"config.model.features={feature_kinds} needs two input channels but "
          f"config.data.input_channels has {num_channels}; add a channel or set model.features=()")
  if feature_kinds:
    pair = tuple(model_config.feature_pair)
    if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= i < num_channels for i in pair):
      _fail(f"config.model.feature_pair={pair} must be two different indices into the "
            f"{num_channels} config.data.input_channels")
  if model_config.fusion not in FUSIONS:
    _fail(f"config.model.fusion={model_config.fusion!r} is not one of {FUSIONS}")
  if model_config.fusion == "attention" and not feature_kinds:
    _fail("config.model.fusion='attention' fuses spatial features; set config.model.features "
          "(e.g. ('ipd',)) or use fusion='concat'")
  if model_config.get("feature_norm", "joint") not in FEATURE_NORMS:
    _fail(f"config.model.feature_norm={model_config.feature_norm!r} is not one of {FEATURE_NORMS}")
  if model_config.dtype not in DTYPES:
    _fail(f"config.model.dtype={model_config.dtype!r} is not one of {tuple(DTYPES)}")
  if model_config.depthwise_impl not in DEPTHWISE_IMPLS:
    _fail(f"config.model.depthwise_impl={model_config.depthwise_impl!r} is not one of "
          f"{DEPTHWISE_IMPLS}")
  if model_config.get("norm_impl", "autodiff") not in NORM_IMPLS:
    _fail(f"config.model.norm_impl={model_config.norm_impl!r} is not one of {NORM_IMPLS}")
  if model_config.get("remat", "none") not in REMAT_MODES:
    _fail(f"config.model.remat={model_config.remat!r} is not one of {REMAT_MODES}")
  remat_blocks = int(model_config.get("remat_blocks", -1))
  if (model_config.get("scan_blocks", False) and model_config.get("remat", "none") != "none"
      and 0 < remat_blocks < model_config.num_blocks):
    _fail(f"config.model.remat_blocks={remat_blocks} of {model_config.num_blocks} needs "
          "config.model.scan_blocks=False (a scan rematerialises all blocks or none)")
  if model_config.enc_basis % 2 or model_config.enc_basis % num_channels:
    _fail(f"config.model.enc_basis={model_config.enc_basis} must be even and divisible by the "
          f"{num_channels} input channels (grouped encoder, mask conv of width E+1)")
  if model_config.upsampling_depth < 1 or model_config.dw_kernel % 2 == 0:
    _fail("config.model.upsampling_depth must be >= 1 and config.model.dw_kernel odd; got "
          f"{model_config.upsampling_depth} and {model_config.dw_kernel}")
  if model_config.extra_outputs < 0:
    _fail(f"config.model.extra_outputs={model_config.extra_outputs} must be >= 0")
  if int(config.data.num_sources) < 1:
    _fail(f"config.data.num_sources={config.data.num_sources} must be >= 1")
  if model_config.get("pcl_head", False) and model_config.extra_outputs != 1:
    _fail(f"config.model.pcl_head=True contrasts the talkers with one noise output; set "
          f"config.model.extra_outputs=1 (it is {model_config.extra_outputs})")


def _as_field_value(value):
  return tuple(value) if isinstance(value, list) else value


def train_inputs(config) -> tuple[str, ...]:
  """Batch keys the model reads while it learns: the clean talkers and noise of NASS's
  contrastive term (`model.pcl_head`), none otherwise."""
  if not config.model.get("pcl_head", False):
    return ()
  return (config.model.get("pcl_clean_key", "sources"), config.model.get("pcl_noise_key", "noise"))


@registry.register("sudormrf", validate=validate,
                   speed_only_fields=("norm_impl", "remat", "remat_blocks", "depthwise_impl",
                                      "uconv_impl"),
                   train_inputs=train_inputs)
def build(config) -> SuDORMRF:
  """SuDoRM-RF for `len(config.data.input_channels)` channels and `config.data.num_sources`."""
  model_config = config.model
  fields = {f.name for f in dataclasses.fields(SuDORMRF)} - {"parent", "name"}
  kwargs = {name: _as_field_value(model_config[name]) for name in fields - set(_FROM_DATA)
            if name in model_config}
  return SuDORMRF(num_sources=int(config.data.num_sources),
                  num_input_channels=len(config.data.input_channels),
                  dtype=DTYPES[model_config.dtype], **kwargs)
