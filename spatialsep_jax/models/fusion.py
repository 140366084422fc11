"""Binaural enhancement with fusion layers (Gajecki & Nogueira, seed 004): two Conv-TasNet sides,
one per ear, joined by parameter-free Hadamard products of their latents.

  mixture [B, T, 2] (left, right CI microphones, `data.input_channels` in that order)
    side l: E_l = enc_l(x_l)            side r: E_r = enc_r(x_r)          latents [B, K, N]
    front fusion:  both TCNs read E_l * E_r            (else TCN_l reads E_l, TCN_r E_r)
    back fusion:   both maskers read Z_l * Z_r         (Z = TCN output [B, K, S])
    each mask multiplies its own side's E, each side's decoder gives that ear's waveform
  -> {"estimates": [B, 2, T]} (the target at the left ear, at the right ear).

Topologies (`config.model.topology`): independent | front | back | double (front and back).
A fusion layer has no parameters, so every topology has exactly the parameters of two
independent sides; `independent` is exactly two separate `ConvTasNet`s (tests/test_fusion.py).

`latents(mixture)` (through `module.apply(variables, x, method="latents")`) returns every
stage's activations per side, for the per-layer activation variance of the seed's
"equalised activation variance" observation (`layer_variances`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spatialsep_jax import interaural_terms  # noqa: F401  (registers the 'interaural' term)
from spatialsep_jax.models import conv_tasnet
from spatialsep_jax.models import registry

TOPOLOGIES = ("independent", "front", "back", "double")
SIDES = ("left", "right")


def fuses_front(topology: str) -> bool:
  return topology in ("front", "double")


def fuses_back(topology: str) -> bool:
  return topology in ("back", "double")


class BinauralFusion(nn.Module):
  """Two sides and a topology; `__call__(mixture [B, T, 2], train)` -> estimates `[B, 2, T]`."""
  left: conv_tasnet.ConvTasNet
  right: conv_tasnet.ConvTasNet
  topology: str = "independent"
  num_input_channels: int = 2

  def _forward(self, mixture, return_latents: bool):
    if mixture.ndim != 3 or mixture.shape[-1] != 2:
      raise ValueError(f"the fusion model takes mixtures [B, T, 2] (left, right), got "
                       f"{mixture.shape}; set data.input_channels to two channels")
    sides = (self.left, self.right)
    num_samples = mixture.shape[1]
    encoded = [side.encode(mixture[..., index]) for index, side in enumerate(sides)]
    latents = [latent for latent, _ in encoded]
    tcn_inputs = ([latents[0] * latents[1]] * 2 if fuses_front(self.topology) else latents)
    separated = [side.separate(tcn_input, return_blocks=True)
                 for side, tcn_input in zip(sides, tcn_inputs)]
    tcn_outputs = [out for out, _ in separated]
    masker_inputs = ([tcn_outputs[0] * tcn_outputs[1]] * 2 if fuses_back(self.topology)
                     else tcn_outputs)
    masks = [side.mask(masker_input) for side, masker_input in zip(sides, masker_inputs)]
    estimates = jnp.stack([
        side.decode(mask * latent, side_info, num_samples)
        for side, mask, latent, (_, side_info) in zip(sides, masks, latents, encoded)], axis=1)
    if not return_latents:
      return estimates, None
    stages = {}
    for index, name in enumerate(SIDES):
      stages[f"{name}/encoder"] = latents[index]
      stages[f"{name}/tcn_input"] = tcn_inputs[index]
      for block, stream in enumerate(separated[index][1]):
        stages[f"{name}/block_{block}"] = stream
      stages[f"{name}/tcn_output"] = tcn_outputs[index]
      stages[f"{name}/masker_input"] = masker_inputs[index]
      stages[f"{name}/mask"] = masks[index]
      stages[f"{name}/masked_latent"] = masks[index] * latents[index]
      stages[f"{name}/output"] = estimates[:, index]
    return estimates, stages

  def __call__(self, mixture, train: bool = False):
    del train
    estimates, _ = self._forward(mixture, return_latents=False)
    return {"estimates": estimates}

  def latents(self, mixture):
    """{"<side>/<stage>": activations [B, K, C] (or [B, T] for "output")}."""
    return self._forward(mixture, return_latents=True)[1]


def layer_variances(module: BinauralFusion, variables: dict, mixture) -> dict[str, np.ndarray]:
  """Per-example activation variance of every stage of both sides: {"<side>/<stage>": [B]}
  (variance over frames and channels, float64 numpy)."""
  stages = module.apply(variables, jnp.asarray(mixture, jnp.float32), method="latents")
  return {name: np.var(np.asarray(value, np.float64).reshape(value.shape[0], -1), axis=-1)
          for name, value in jax.device_get(stages).items()}


def _validate(config) -> None:
  conv_tasnet.validate_side(config)
  topology = config.model.get("topology", None)
  if topology not in TOPOLOGIES:
    raise registry.ModelConfigError(f"config.model.topology={topology!r} is not one of "
                                    f"{TOPOLOGIES}")
  if len(config.data.input_channels) != 2:
    raise registry.ModelConfigError(
        f"the fusion model takes two channels (left, right) but data.input_channels is "
        f"{tuple(config.data.input_channels)}; e.g. ('L_tmic', 'R_tmic')")


@registry.register("fusion", validate=_validate)
def build_fusion(config) -> BinauralFusion:
  return BinauralFusion(conv_tasnet.side_from_config(config.model),
                        conv_tasnet.side_from_config(config.model),
                        topology=config.model.topology)
