"""Models chosen by name: `config.model.name` -> a registered builder.

A registered model owns its config section: it validates it and builds a Flax module. The
trainer only sees `Model`, two pure functions over variables:

  model = models.build_model(config)
  variables = model.init(rng, mixture)                 # {"params": ..., other collections}
  outputs, new_state = model.apply(variables, mixture, train=True, rng=key)
  outputs["estimates"]                                 # [B, S', T] and any other named outputs

Register a new system from any module (a test file included):

  @registry.register("my_model", speed_only_fields=("impl",))
  def build_my_model(config):        # returns a flax.linen.Module
    return MyModule(...)

The module's `__call__(mixture [B, T, C], train: bool)` returns a dict of named outputs (or
a bare `[B, S', T]` array, taken as {"estimates": ...}); dropout and other randomness use the
"dropout" rng stream; collections other than "params" (batch statistics) are model state,
updated when `train=True`.

A model that needs clean signals while it learns (encoder outputs of the clean sources for a
contrastive term, a teacher's embeddings of the target) names those batch keys:

  @registry.register("my_model", train_inputs=("sources",))   # or a function of the config

and its `__call__(mixture, train, references=None)` gets `references={"sources": ...}` in the
training and validation steps and None at inference. Parameters used only with references
must also be created when references is None (Flax builds parameters in `init`, which sees
no batch), e.g. by running that path on a placeholder under `self.is_initializing()`.
"""

import dataclasses
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class ModelConfigError(ValueError):
  """A one-line problem with `config.model` (names the field and the fix)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  build: Callable[[Any], nn.Module]
  validate: Callable[[Any], None] | None
  # config.model fields that change how the function is computed, not what it computes
  # (kernel choice, rematerialisation): left out of the run's identity.
  speed_only_fields: tuple[str, ...]
  # Batch keys the model reads in training and validation (`references`), or a function of
  # the config returning them.
  train_inputs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()

  def train_input_keys(self, config) -> tuple[str, ...]:
    keys = self.train_inputs(config) if callable(self.train_inputs) else self.train_inputs
    return tuple(keys)


_MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, validate: Callable[[Any], None] | None = None,
             speed_only_fields: tuple[str, ...] = (),
             train_inputs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()):
  """Decorator: registers `build(config) -> nn.Module` under `name`."""

  def wrap(build):
    inputs = train_inputs if callable(train_inputs) else tuple(train_inputs)
    _MODELS[name] = ModelSpec(name, build, validate, tuple(speed_only_fields), inputs)
    return build

  return wrap


def names() -> tuple[str, ...]:
  _import_builtin_models()
  return tuple(sorted(_MODELS))


def get(name: str) -> ModelSpec:
  _import_builtin_models()
  if name not in _MODELS:
    raise ModelConfigError(f"unknown config.model.name {name!r}; registered models: "
                           f"{', '.join(sorted(_MODELS))}")
  return _MODELS[name]


def validate(config) -> None:
  spec = get(config.model.name)
  if spec.validate is not None:
    spec.validate(config)


def _import_builtin_models():
  # Importing the model modules runs their @register decorators.
  from spatialsep_jax.models import deep_clustering, sudormrf_system  # noqa: F401
  from spatialsep_jax.models import conv_tasnet, fusion  # noqa: F401
  from spatialsep_jax.models import dual_path  # noqa: F401
  from spatialsep_jax.models import cnunet  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Model:
  """A built model as pure functions of (variables, inputs)."""
  module: nn.Module
  num_input_channels: int
  # Batch keys passed to the module as `references` in training and validation.
  train_inputs: tuple[str, ...] = ()

  @property
  def _takes_train(self) -> bool:
    return "train" in inspect.signature(self.module.__call__).parameters

  def _kwargs(self, train: bool, references: dict | None = None) -> dict:
    kwargs = {"train": train} if self._takes_train else {}
    if self.train_inputs:
      kwargs["references"] = references
    return kwargs

  def references(self, batch: dict) -> dict | None:
    """The batch entries the model reads while it learns (None when it reads none)."""
    if not self.train_inputs:
      return None
    return {key: batch[key] for key in self.train_inputs}

  def init(self, rng: jax.Array, mixture: jax.Array) -> dict:
    """All variable collections of the model for inputs shaped like `mixture` [B, T, C]."""
    params_rng, dropout_rng = jax.random.split(rng)
    variables = self.module.init({"params": params_rng, "dropout": dropout_rng}, mixture,
                                 **self._kwargs(False))
    return dict(variables)

  def apply(self, variables: dict, mixture: jax.Array, *, train: bool = False,
            rng: jax.Array | None = None, references: dict | None = None) -> tuple[dict, dict]:
    """(outputs dict, updated non-param collections) of `mixture` [B, T, C]; `references`
    (batch entries named by `train_inputs`) only in training and validation."""
    mutable = [name for name in variables if name != "params"] if train else []
    mutable = mutable or False
    rngs = {"dropout": rng} if rng is not None else None
    result = self.module.apply(variables, mixture, rngs=rngs, mutable=mutable,
                               **self._kwargs(train, references))
    if mutable:
      outputs, new_state = result
    else:
      outputs, new_state = result, {k: v for k, v in variables.items() if k != "params"}
    if not isinstance(outputs, dict):
      outputs = {"estimates": outputs}
    return outputs, dict(new_state)

  def estimates(self, variables: dict, mixture: jax.Array) -> jax.Array:
    """Inference: the separated waveforms `[B, S', T]` float32."""
    outputs, _ = self.apply(variables, mixture.astype(jnp.float32))
    return outputs["estimates"].astype(jnp.float32)


def build(config) -> nn.Module:
  """The Flax module of `config.model.name`, validated."""
  spec = get(config.model.name)
  if spec.validate is not None:
    spec.validate(config)
  return spec.build(config)


def build_model(config) -> Model:
  """`build(config)` as pure functions with dict outputs (what the trainer uses)."""
  spec = get(config.model.name)
  module = build(config)
  train_inputs = spec.train_input_keys(config)
  if train_inputs and "references" not in inspect.signature(module.__call__).parameters:
    raise ModelConfigError(f"model {spec.name!r} declares train_inputs {train_inputs} but its "
                           "__call__ takes no `references` argument; add `references=None`")
  return Model(module, len(config.data.input_channels), train_inputs)
