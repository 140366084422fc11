"""Loss terms of the CNUNet recipe (seed 003), registered in `loss_terms`.

  "compressed_spectral"  0.1 (MSE real + MSE imag) + 0.9 MSE magnitude between the compressed
                         spectra (|X|^0.2 e^{j angle X}) of the estimate and the target;
  "latent_replication"   MSE between the model's bottleneck output ("latent") and a stored
                         stage-1 latent (batch key `latent_key`), the stored one normalised per
                         utterance and part over (frames, bins, channels) as the authors'
                         GroupNorm(1, C) without a trained affine; weight 0.05 in the recipe.

  config.loss.terms = {
      "spectral": {"term": "compressed_spectral", "weight": 1.0, "targets": "targets_direct:0"},
      "latent": {"term": "latent_replication", "weight": 0.05}}
"""

import jax.numpy as jnp

from spatialsep_jax import loss_terms
from spatialsep_jax import tasks
from spatialsep_jax.models import cnunet

LATENT_KEY = "cnunet_latent"
LATENT_EPS = 1e-8


def _spectral_keys(settings):
  return (settings.get("targets", "sources").partition(":")[0],)


def compressed_spectral_mse(estimate, target, *, n_fft=512, hop=256, power=0.2,
                            weight_real_imag=0.1, weight_magnitude=0.9):
  """Per-example loss of waveforms `[B, T]` (or `[B, K, T]`, averaged over K): means over
  frames and bins of the squared errors of the compressed spectra."""
  est = cnunet.compressed_stft(estimate, n_fft, hop, power)
  ref = cnunet.compressed_stft(target, n_fft, hop, power)
  axes = tuple(range(1, est.ndim))
  real_imag = (jnp.mean(jnp.square(jnp.real(est) - jnp.real(ref)), axis=axes)
               + jnp.mean(jnp.square(jnp.imag(est) - jnp.imag(ref)), axis=axes))
  magnitude = jnp.mean(jnp.square(jnp.abs(est) - jnp.abs(ref)), axis=axes)
  return weight_real_imag * real_imag + weight_magnitude * magnitude, real_imag, magnitude


@loss_terms.register("compressed_spectral", batch_keys=_spectral_keys)
def compressed_spectral(outputs, batch, rng, *, targets="sources", outputs_key="estimates",
                        n_fft=512, hop=256, power=0.2, weight_real_imag=0.1,
                        weight_magnitude=0.9):
  """Output k against target k (`tasks.select` names, e.g. "targets_direct:0")."""
  del rng
  estimates = outputs[outputs_key].astype(jnp.float32)
  references = tasks.select(batch, targets).astype(jnp.float32)
  if references.ndim == 2:
    references = references[:, None]
  if estimates.shape != references.shape:
    raise loss_terms.LossConfigError(
        f"compressed_spectral: output {outputs_key!r} {estimates.shape} and target {targets!r} "
        f"{references.shape} differ in shape; the model must emit one output per target")
  value, real_imag, magnitude = compressed_spectral_mse(
      estimates, references, n_fft=n_fft, hop=hop, power=power,
      weight_real_imag=weight_real_imag, weight_magnitude=weight_magnitude)
  return value, {"real_imag": real_imag, "magnitude": magnitude}


def normalise_latent(latent):
  """[B, N, F, P, C] -> zero mean, unit variance per example and part over (N, F, C)."""
  latent = latent.astype(jnp.float32)
  mean = jnp.mean(latent, axis=(1, 2, 4), keepdims=True)
  var = jnp.mean(jnp.square(latent - mean), axis=(1, 2, 4), keepdims=True)
  return (latent - mean) / jnp.sqrt(var + LATENT_EPS)


def _latent_keys(settings):
  return (settings.get("latent_key", LATENT_KEY),)


@loss_terms.register("latent_replication", batch_keys=_latent_keys)
def latent_replication(outputs, batch, rng, *, latent_key=LATENT_KEY, outputs_key="latent"):
  """MSE(model latent, normalised stored latent) per example."""
  del rng
  latent = outputs[outputs_key].astype(jnp.float32)
  stored = batch[latent_key]
  if stored.shape != latent.shape:
    raise loss_terms.LossConfigError(
        f"latent_replication: the stored latents {tuple(stored.shape)} (batch {latent_key!r}) "
        f"and the model's {outputs_key!r} {tuple(latent.shape)} differ; store them with the "
        "same model widths and data.segment_seconds (launch/cnunet_latents.py)")
  error = jnp.square(latent - normalise_latent(stored))
  return jnp.mean(error, axis=tuple(range(1, error.ndim))), {}


__all__ = ["LATENT_KEY", "compressed_spectral", "compressed_spectral_mse", "latent_replication",
           "normalise_latent"]
