"""Separator and enhancer models, chosen by `config.model.name` from a registry.

  module = models.build(config)             # the Flax module of config.model.name
  model = models.build_model(config)        # the same as pure functions with dict outputs:
  variables = model.init(rng, mixture)      # mixture [B, T, C_in]
  outputs, state = model.apply(variables, mixture, train=True, rng=key)
  outputs["estimates"]                      # [B, S', T] float32, plus any named outputs

`registry.register` adds a model (see `registry.py`); `models.names()` lists them.
"""

import jax
import jax.numpy as jnp

from spatialsep_jax.models.layers import depthwise_conv1d
from spatialsep_jax.models.registry import (Model, ModelConfigError, build, build_model, get,
                                            names, register, validate)
from spatialsep_jax.models.sudormrf import SuDORMRF

__all__ = ["Model", "ModelConfigError", "SuDORMRF", "abstract_params", "build", "build_model",
           "count_params", "depthwise_conv1d", "flops_per_second_of_audio", "get", "names",
           "register", "validate"]


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
  return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))


def _num_input_channels(module) -> int:
  return int(getattr(module, "num_input_channels", 1))


def abstract_params(module, num_samples: int = 8000):
  """Parameter shapes (ShapeDtypeStructs) of a built module, without computing anything."""
  model = Model(module, _num_input_channels(module))
  mixture = jnp.zeros((1, num_samples, model.num_input_channels))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), mixture))["params"]


def flops_per_second_of_audio(config) -> float:
  """XLA's FLOP count of one forward pass on one second of audio (batch 1, at
  `config.data.sample_rate`), from the compiled program's cost analysis."""
  model = build_model(config)
  num_samples = int(config.data.sample_rate)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, num_samples, model.num_input_channels))))
  mixture = jax.ShapeDtypeStruct((1, num_samples, model.num_input_channels), jnp.float32)
  compiled = jax.jit(model.estimates).lower(variables, mixture).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])
