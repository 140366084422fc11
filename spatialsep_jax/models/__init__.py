"""Separator models: built from a config, applied as pure functions.

  model = models.build(config)
  params = model.init(rng, mixture)["params"]          # mixture [B, T, C_in]
  estimates = model.apply({"params": params}, mixture)  # [B, S + extra_outputs, T] float32
"""

import jax
import jax.numpy as jnp
import ml_collections

from spatialsep_jax.features import FEATURE_KINDS
from spatialsep_jax.models.layers import DEPTHWISE_IMPLS, NORM_IMPLS, depthwise_conv1d
from spatialsep_jax.models.sudormrf import REMAT_MODES, SuDORMRF

MODEL_NAMES = ("sudormrf",)
FUSIONS = ("concat", "attention")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["SuDORMRF", "build", "count_params", "depthwise_conv1d",
           "flops_per_second_of_audio"]


def _validate(model_config: ml_collections.ConfigDict, num_channels: int) -> None:
  if model_config.name not in MODEL_NAMES:
    raise ValueError(f"unknown model.name {model_config.name!r}; use one of {MODEL_NAMES}")
  feature_kinds = tuple(model_config.features)
  unknown = [kind for kind in feature_kinds if kind not in FEATURE_KINDS]
  if unknown or len(set(feature_kinds)) != len(feature_kinds):
    raise ValueError(f"model.features={feature_kinds} must be distinct kinds from {FEATURE_KINDS}")
  if feature_kinds and num_channels < 2:
    raise ValueError(f"model.features={feature_kinds} need two input channels but "
                     f"data.input_channels has {num_channels}; add a channel or set model.features=()")
  if feature_kinds:
    pair = tuple(model_config.feature_pair)
    if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= i < num_channels for i in pair):
      raise ValueError(f"model.feature_pair={pair} must be two different indices into the "
                       f"{num_channels} data.input_channels")
  if model_config.fusion not in FUSIONS:
    raise ValueError(f"unknown model.fusion {model_config.fusion!r}; use one of {FUSIONS}")
  if model_config.dtype not in DTYPES:
    raise ValueError(f"unknown model.dtype {model_config.dtype!r}; use one of {tuple(DTYPES)}")
  if model_config.depthwise_impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"unknown model.depthwise_impl {model_config.depthwise_impl!r}; "
                     f"use one of {DEPTHWISE_IMPLS}")
  if model_config.get("norm_impl", "autodiff") not in NORM_IMPLS:
    raise ValueError(f"unknown model.norm_impl {model_config.norm_impl!r}; use one of {NORM_IMPLS}")
  if model_config.get("remat", "none") not in REMAT_MODES:
    raise ValueError(f"unknown model.remat {model_config.remat!r}; use one of {REMAT_MODES}")
  remat_blocks = int(model_config.get("remat_blocks", -1))
  if (model_config.get("scan_blocks", False) and model_config.get("remat", "none") != "none"
      and 0 < remat_blocks < model_config.num_blocks):
    raise ValueError(f"model.remat_blocks={remat_blocks} of {model_config.num_blocks} needs "
                     "model.scan_blocks=False (a scan rematerialises all blocks or none)")
  if model_config.enc_basis % 2 or model_config.enc_basis % num_channels:
    raise ValueError(f"model.enc_basis={model_config.enc_basis} must be even and divisible by "
                     f"the {num_channels} input channels (grouped encoder, mask conv of width E+1)")
  if model_config.upsampling_depth < 1 or model_config.dw_kernel % 2 == 0:
    raise ValueError("model.upsampling_depth must be >= 1 and model.dw_kernel odd; got "
                     f"{model_config.upsampling_depth} and {model_config.dw_kernel}")
  if model_config.extra_outputs < 0:
    raise ValueError(f"model.extra_outputs={model_config.extra_outputs} must be >= 0")


def build(config: ml_collections.ConfigDict) -> SuDORMRF:
  """The separator of `config.model` for `len(config.data.input_channels)` input
  channels and `config.data.num_sources` sources."""
  model_config = config.model
  num_channels = len(config.data.input_channels)
  _validate(model_config, num_channels)
  return SuDORMRF(
      num_sources=int(config.data.num_sources),
      num_input_channels=num_channels,
      features=tuple(model_config.features),
      feature_pair=tuple(int(i) for i in model_config.feature_pair),
      fusion=model_config.fusion,
      feature_norm=model_config.get("feature_norm", "joint"),
      n_fft=int(model_config.n_fft),
      ild_clip_db=float(model_config.ild_clip_db),
      enc_basis=int(model_config.enc_basis),
      enc_kernel=int(model_config.enc_kernel),
      enc_stride=int(model_config.enc_stride),
      bottleneck=int(model_config.bottleneck),
      num_blocks=int(model_config.num_blocks),
      upsampling_depth=int(model_config.upsampling_depth),
      dw_kernel=int(model_config.dw_kernel),
      extra_outputs=int(model_config.extra_outputs),
      dtype=DTYPES[model_config.dtype],
      depthwise_impl=model_config.depthwise_impl,
      norm_impl=model_config.get("norm_impl", "autodiff"),
      remat=model_config.get("remat", "none"),
      remat_blocks=int(model_config.get("remat_blocks", -1)),
      scan_blocks=bool(model_config.get("scan_blocks", False)))


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
  return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))


def abstract_params(model: SuDORMRF, num_samples: int = 8000):
  """Parameter shapes (ShapeDtypeStructs) of `model`, without computing anything."""
  mixture = jax.ShapeDtypeStruct((1, num_samples, model.num_input_channels), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(mixture.shape)))["params"]


def flops_per_second_of_audio(config: ml_collections.ConfigDict) -> float:
  """XLA's FLOP count of one forward pass on one second of audio (batch 1, at
  `config.data.sample_rate`), from the compiled program's cost analysis."""
  model = build(config)
  num_samples = int(config.data.sample_rate)
  params = abstract_params(model, num_samples)
  mixture = jax.ShapeDtypeStruct((1, num_samples, model.num_input_channels), jnp.float32)
  compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, mixture).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])
