"""The one SI-SDR and SNR formula of the project, shared by losses and metrics (numpy or jax).

Where eps goes decides what silence scores. With e the estimate and r the reference (both
zero-mean for SI-SDR) and EPS = 1e-12 (an absolute energy, far below any audible signal):

  alpha  = (<e, r> + EPS) / (||r||^2 + EPS)
  SI-SDR = 10 log10( ||alpha r||^2 / (||e - alpha r||^2 + EPS) + EPS )
  SNR    = 10 log10( ||r||^2       / (||e - r||^2       + EPS) + EPS )

The ratio never gets eps in its numerator, so an all-zero estimate scores about
10 log10(EPS / ||r||^2) (below -100 dB for speech-level references) instead of the 0 dB that
eps in both energies gave, and a vanishing estimate (c r with c -> 0) goes to the same
floor; a perfect estimate at unit scale or at 1e-3 of the reference level still scores above
40 dB (the residual is rounding error). The outer EPS keeps log10 finite when the estimate is
exactly 0. The SNR of an all-zero estimate is 0 dB by definition (the error equals the
reference), which eps cannot and should not change. Asteroid's `singlesrc_neg_sisdr` places
eps the same way in alpha and in the outer log.
"""

EPS = 1e-12


def sisdr_db(est, ref, xp, eps=EPS, pairwise=False):
  """Zero-mean SI-SDR in dB.

  Args:
    est: `[..., T]` estimates (or `[B, N, T]` with pairwise=True).
    ref: `[..., T]` references (or `[B, M, T]` with pairwise=True).
    xp: numpy or jax.numpy.
    pairwise: score every estimate against every reference.
  Returns:
    `[...]` (or `[B, N, M]` with pairwise=True).
  """
  est = est - xp.mean(est, axis=-1, keepdims=True)
  ref = ref - xp.mean(ref, axis=-1, keepdims=True)
  if pairwise:
    est, ref = est[:, :, None, :], ref[:, None, :, :]
  alpha = ((xp.sum(est * ref, axis=-1, keepdims=True) + eps)
           / (xp.sum(ref**2, axis=-1, keepdims=True) + eps))
  target = alpha * ref
  target_energy = xp.sum(target**2, axis=-1)
  residual_energy = xp.sum((est - target)**2, axis=-1)
  return 10.0 * xp.log10(target_energy / (residual_energy + eps) + eps)


def snr_db(est, ref, xp, eps=EPS, pairwise=False):
  """Plain SNR in dB (no mean removal, no scaling); shapes as `sisdr_db`."""
  if pairwise:
    est, ref = est[:, :, None, :], ref[:, None, :, :]
  ref_energy = xp.sum(ref**2, axis=-1)
  residual_energy = xp.sum((est - ref)**2, axis=-1)
  return 10.0 * xp.log10(ref_energy / (residual_energy + eps) + eps)
