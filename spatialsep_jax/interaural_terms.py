"""Interaural loss term: how far the estimate's interaural cues are from the target's.

Scale-invariant losses leave each ear's gain free, so a per-ear SI-SDR model can move the
interaural level difference (ILD) of the target without penalty. This term adds the ILD and/or
IPD error of the estimate pair against the clean target pair, per STFT bin, weighted by the
target's energy in the bin (bins where the target is absent carry no cue to keep):

  config.loss.terms.interaural = {"term": "interaural", "weight": 0.1,
                                  "targets": "targets_direct:0", "cues": "ild_ipd",
                                  "n_fft": 256, "hop": 64}

  estimates [B, 2, T] (left, right), targets `tasks.select(batch, targets)` [B, 2, T]
  ILD error  = sum_b w_b |ILD_est,b - ILD_ref,b| / sum_b w_b     (dB; ILD clipped to +-clip_db)
  IPD error  = sum_b w_b (1 - cos(IPD_est,b - IPD_ref,b)) / sum_b w_b     (0..2)
  w_b        = |L_ref,b|^2 + |R_ref,b|^2 for bins within `threshold_db` of the loudest bin
  per-example value = ild_scale * ILD error + IPD error (either alone with cues="ild"/"ipd").

Importing this module registers the term; `models/fusion.py` imports it, so it is there for
every config that names a registered model.
"""

import jax
import jax.numpy as jnp

from spatialsep_jax import features
from spatialsep_jax import loss_terms
from spatialsep_jax import tasks

CUES = ("ild", "ipd", "ild_ipd")
TERM_NAME = "interaural"
LEVEL_EPS = 1e-8


def _spectra(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """`[B, 2, T]` -> complex `[B, 2, L, F]` (frames centred on l * hop)."""
  batch, ears, length = x.shape
  frames = -(-length // hop) + 1
  spectrum = features.stft(x.reshape(batch * ears, length), n_fft, hop, frames)
  return spectrum.reshape(batch, ears, *spectrum.shape[1:])


def interaural_errors(estimates: jax.Array, targets: jax.Array, *, n_fft: int = 256,
                      hop: int = 64, clip_db: float = 30.0,
                      threshold_db: float = 40.0) -> tuple[jax.Array, jax.Array]:
  """(ILD error [B] in dB, IPD error [B] in 0..2) of estimates against targets, both
  `[B, 2, T]` (left, right); definitions in the module docstring."""
  if estimates.ndim != 3 or estimates.shape[1] != 2 or estimates.shape != targets.shape:
    raise ValueError(f"interaural errors need estimates and targets [B, 2, T] (left, right), "
                     f"got {estimates.shape} and {targets.shape}")
  est = _spectra(estimates.astype(jnp.float32), n_fft, hop)
  ref = _spectra(jax.lax.stop_gradient(targets.astype(jnp.float32)), n_fft, hop)
  energy = jnp.abs(ref[:, 0]) ** 2 + jnp.abs(ref[:, 1]) ** 2
  level = 10.0 * jnp.log10(energy + 1e-20)
  peak = jnp.max(level, axis=(1, 2), keepdims=True)
  weights = jnp.where(level > peak - threshold_db, energy, 0.0)
  weights = weights / jnp.maximum(jnp.sum(weights, axis=(1, 2), keepdims=True), 1e-20)

  def ild(spec):
    power = jnp.abs(spec) ** 2
    value = 10.0 * jnp.log10((power[:, 0] + LEVEL_EPS) / (power[:, 1] + LEVEL_EPS))
    return jnp.clip(value, -clip_db, clip_db)

  ild_error = jnp.sum(weights * jnp.abs(ild(est) - ild(ref)), axis=(1, 2))
  # cos(IPD_est - IPD_ref) = Re(c_est conj(c_ref)) / (|c_est| |c_ref|), c = L conj(R): no angle
  # (whose gradient is undefined at zero) is taken.
  cross_est = est[:, 0] * jnp.conj(est[:, 1])
  cross_ref = ref[:, 0] * jnp.conj(ref[:, 1])
  cosine = jnp.real(cross_est * jnp.conj(cross_ref)) / (
      jnp.sqrt(jnp.abs(cross_est) ** 2 + LEVEL_EPS ** 2) * jnp.abs(cross_ref) + 1e-20)
  ipd_error = jnp.sum(weights * (1.0 - cosine), axis=(1, 2))
  return ild_error, ipd_error


def _keys(settings):
  return (settings.get("targets", "targets_direct:0").partition(":")[0],)


@loss_terms.register(TERM_NAME, batch_keys=_keys)
def interaural(outputs, batch, rng, *, targets="targets_direct:0", cues="ild_ipd",
               ild_scale=0.1, n_fft=256, hop=64, clip_db=30.0, threshold_db=40.0,
               outputs_key="estimates"):
  """Interaural cue error of the estimate pair [B, 2, T] against the target pair (per example
  [B]); logs `ild_db` and `ipd` (1 - cos) separately."""
  del rng
  if cues not in CUES:
    raise loss_terms.LossConfigError(f"config.loss.terms.*.cues={cues!r} is not one of {CUES}")
  references = tasks.select(batch, targets)
  estimates = outputs[outputs_key]
  if references.ndim != 3 or references.shape[1] != 2:
    raise loss_terms.LossConfigError(
        f"the interaural term needs a target at two ears, but {targets!r} is "
        f"{tuple(references.shape)}; set data.target_mics=('L_tmic', 'R_tmic')")
  ild_error, ipd_error = interaural_errors(estimates, references, n_fft=n_fft, hop=hop,
                                           clip_db=clip_db, threshold_db=threshold_db)
  value = {"ild": ild_scale * ild_error, "ipd": ipd_error,
           "ild_ipd": ild_scale * ild_error + ipd_error}[cues]
  return value, {"ild_db": ild_error, "ipd": ipd_error}
