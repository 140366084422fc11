"""Separation losses: pairwise SI-SDR / SNR, permutation-invariant training, mask oracles.

Conventions: waveforms are `[B, N, T]` (estimates) and `[B, M, T]` (references); losses are
computed in float32 whatever the model's dtype (bfloat16 runs included). A permutation
`perm [B, M]` maps each reference to the estimate paired with it:
`reorder(est, perm)[b, m] = est[b, perm[b, m]]`.

Also the separation basics of the project's seed 001: ideal binary / ratio mask oracles and
deep clustering (low-rank loss plus a k-means read-out of the embeddings into masks).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spatialsep_jax import sdr

# Exhaustive PIT enumerates N!/(N-M)! pairings; with up to 4 outputs that is at most 24.
MAX_EXHAUSTIVE_OUTPUTS = 4
LOSS_NAMES = ("neg_sisdr", "neg_snr")


def _check_pair(est, ref):
  if est.ndim != 3 or ref.ndim != 3:
    raise ValueError(
        f"expected est [B, N, T] and ref [B, M, T], got shapes {est.shape} and {ref.shape}")
  if est.shape[0] != ref.shape[0] or est.shape[-1] != ref.shape[-1]:
    raise ValueError(
        f"est {est.shape} and ref {ref.shape} must share batch size and length; "
        "crop or pad one of them")


@functools.partial(jax.jit, static_argnames=("eps",))
def pairwise_neg_sisdr(est, ref, eps=sdr.EPS):
  """Negative zero-mean scale-invariant SDR of every estimate against every reference.

  The formula and where eps sits are in `spatialsep_jax.sdr` (silence scores far below
  -60 dB, not 0 dB).

  Args:
    est: `[B, N, T]` estimates (any float dtype; cast to float32).
    ref: `[B, M, T]` references.
  Returns:
    `[B, N, M]` float32 negative SI-SDR in dB (lower is better).
  """
  _check_pair(est, ref)
  return -sdr.sisdr_db(est.astype(jnp.float32), ref.astype(jnp.float32), jnp, eps,
                       pairwise=True)


@functools.partial(jax.jit, static_argnames=("eps",))
def pairwise_neg_snr(est, ref, eps=sdr.EPS):
  """Negative plain SNR of every estimate against every reference (no mean removal, no scaling).

  Unlike SI-SDR the estimate's level matters, so a model trained with it keeps level
  differences between channels (ILD).

  Args:
    est: `[B, N, T]` estimates; ref: `[B, M, T]` references.
  Returns:
    `[B, N, M]` float32 negative SNR in dB.
  """
  _check_pair(est, ref)
  return -sdr.snr_db(est.astype(jnp.float32), ref.astype(jnp.float32), jnp, eps, pairwise=True)


def permutations_table(num_outputs, num_references):
  """All injective pairings as `[K, M]` int array: row k gives the estimate of each reference."""
  return np.array(list(itertools.permutations(range(num_outputs), num_references)), np.int32)


def _pit_exhaustive(pairwise):
  num_outputs, num_refs = pairwise.shape[1:]
  table = permutations_table(num_outputs, num_refs)
  # one_hot[k, n, m] = 1 where permutation k pairs estimate n with reference m.
  one_hot = np.zeros((len(table), num_outputs, num_refs), np.float32)
  for k, row in enumerate(table):
    one_hot[k, row, np.arange(num_refs)] = 1.0
  loss_per_perm = jnp.einsum("bnm,knm->bk", pairwise, one_hot) / num_refs
  best = jax.lax.stop_gradient(jnp.argmin(loss_per_perm, axis=-1))
  loss = jnp.take_along_axis(loss_per_perm, best[:, None], axis=-1)[:, 0]
  return loss, jnp.asarray(table)[best]


def _hungarian_perm(cost):
  rows, cols = optax.assignment.hungarian_algorithm(cost)
  # For N >= M the transposed problem gives, per reference column, the chosen estimate row.
  perm = jnp.zeros(cost.shape[1], jnp.int32).at[cols].set(rows.astype(jnp.int32))
  return perm


def _pit_hungarian(pairwise):
  num_refs = pairwise.shape[2]
  perm = jax.vmap(_hungarian_perm)(jax.lax.stop_gradient(pairwise))
  chosen = jnp.take_along_axis(pairwise, perm[:, None, :], axis=1)[:, 0, :]
  return jnp.sum(chosen, axis=-1) / num_refs, perm


@jax.jit
def pit(pairwise):
  """Permutation-invariant minimum of a pairwise loss matrix.

  Up to 4 outputs every pairing is scored with one einsum against a stacked one-hot
  permutation tensor; beyond that the assignment comes from the Hungarian algorithm
  (`optax.assignment.hungarian_algorithm`, vmapped) on the stop-gradient matrix. Either way the
  gradient flows only through the entries of the chosen pairing.

  Args:
    pairwise: `[B, N, M]` loss of estimate n against reference m, N >= M (extra outputs, e.g. a
      noise estimate, stay unpaired).
  Returns:
    loss `[B]` (mean over the M pairs) and perm `[B, M]` (estimate index of each reference).
  """
  if pairwise.ndim != 3:
    raise ValueError(f"expected pairwise losses [B, N, M], got shape {pairwise.shape}")
  num_outputs, num_refs = pairwise.shape[1:]
  if num_outputs < num_refs:
    raise ValueError(
        f"{num_outputs} estimates cannot cover {num_refs} references; the model needs "
        "at least as many outputs as sources")
  if num_outputs <= MAX_EXHAUSTIVE_OUTPUTS:
    return _pit_exhaustive(pairwise)
  return _pit_hungarian(pairwise)


def clamp_loss(loss, clamp_db):
  """Clips a dB loss to [-clamp_db, clamp_db] as the study does (None or 0 disables).

  A hard clip has zero gradient outside the range: examples already better than clamp_db dB
  stop contributing, which keeps easy examples from dominating. That is the study's choice.
  """
  if not clamp_db:
    return loss
  return jnp.clip(loss, -clamp_db, clamp_db)


@functools.partial(jax.jit, static_argnames=("name", "clamp_db"))
def separation_loss(est, ref, name="neg_sisdr", clamp_db=30.0):
  """PIT separation loss in float32.

  Args:
    est: `[B, N, T]` estimates (float32 or bfloat16), N >= M.
    ref: `[B, M, T]` references.
    name: "neg_sisdr" (zero-mean, scale-invariant) or "neg_snr" (level-preserving).
    clamp_db: per-example clip of the PIT loss, see `clamp_loss`.
  Returns:
    (scalar mean loss, aux) with aux = {"per_example": [B] clamped loss, "perm": [B, M]}.
  """
  if name == "neg_sisdr":
    pairwise = pairwise_neg_sisdr(est, ref)
  elif name == "neg_snr":
    pairwise = pairwise_neg_snr(est, ref)
  else:
    raise ValueError(f"unknown loss name {name!r}; use one of {LOSS_NAMES}")
  per_example, perm = pit(pairwise)
  per_example = clamp_loss(per_example, clamp_db)
  return jnp.mean(per_example), {"per_example": per_example, "perm": perm}


def reorder(est, perm):
  """Aligns estimates to references: `[B, N, ...]`, perm `[B, M]` -> `[B, M, ...]`."""
  index = perm.reshape(perm.shape + (1,) * (est.ndim - 2))
  return jnp.take_along_axis(est, index, axis=1)


# ------------------------------------------------------------------ mask oracles


def ideal_binary_mask(sources_stft):
  """Ideal binary mask: 1 for the loudest source in each time-frequency bin.

  Args:
    sources_stft: `[B, S, L, F]` complex (or magnitude) STFTs of the sources.
  Returns:
    `[B, S, L, F]` float32 masks, one-hot across S (ties go to the lowest source index).
  """
  magnitude = jnp.abs(sources_stft)
  winner = jnp.argmax(magnitude, axis=1)
  return jax.nn.one_hot(winner, sources_stft.shape[1], axis=1, dtype=jnp.float32)


def ideal_ratio_mask(sources_stft, power=1.0, eps=1e-8):
  """Ideal ratio mask |X_s|^p / sum_s' |X_s'|^p (p=1 magnitude ratio, p=2 energy ratio).

  Args:
    sources_stft: `[B, S, L, F]` complex STFTs of the sources.
    power: exponent p of the magnitudes.
    eps: added to every magnitude^p, so silent bins get an equal share 1/S.
  Returns:
    `[B, S, L, F]` float32 masks summing to 1 across S.
  """
  weight = jnp.abs(sources_stft).astype(jnp.float32) ** power + eps
  return weight / jnp.sum(weight, axis=1, keepdims=True)


# ------------------------------------------------------------------ deep clustering


def deep_clustering_targets(sources_stft, threshold_db=40.0):
  """Deep clustering targets from source STFTs.

  Args:
    sources_stft: `[B, S, L, F]` complex STFTs of the sources.
    threshold_db: bins more than this below the loudest mixture bin get weight 0.
  Returns:
    assignments `[B, L*F, S]` one-hot dominant source, weights `[B, L*F]` in {0, 1}.
  """
  batch, num_sources = sources_stft.shape[:2]
  ibm = ideal_binary_mask(sources_stft)
  assignments = jnp.moveaxis(ibm, 1, -1).reshape(batch, -1, num_sources)
  mixture_db = 20.0 * jnp.log10(jnp.abs(jnp.sum(sources_stft, axis=1)) + 1e-8)
  peak = jnp.max(mixture_db, axis=(1, 2), keepdims=True)
  weights = (mixture_db > peak - threshold_db).astype(jnp.float32).reshape(batch, -1)
  return assignments, weights


@functools.partial(jax.jit, static_argnames=("normalize",))
def deep_clustering_loss(embeddings, assignments, weights=None, normalize=True):
  """Deep clustering loss ||V V^T - Y Y^T||_F^2 in its low-rank form.

  ||V^T V||^2 - 2 ||V^T Y||^2 + ||Y^T Y||^2 never builds the [L*F, L*F] affinity matrices.
  With weights w, V and Y rows are scaled by sqrt(w) (Hershey et al.'s weighted variant).

  Args:
    embeddings: `[B, K, D]` (K = L*F bins), usually unit-norm rows.
    assignments: `[B, K, S]` one-hot (or soft) source memberships.
    weights: optional `[B, K]` bin weights (e.g. from `deep_clustering_targets`).
    normalize: divide by (sum of weights)^2 (K^2 without weights) to make it length-free.
  Returns:
    `[B]` float32 loss per example.
  """
  embeddings = embeddings.astype(jnp.float32)
  assignments = assignments.astype(jnp.float32)
  if weights is None:
    weights = jnp.ones(embeddings.shape[:2], jnp.float32)
  root = jnp.sqrt(weights.astype(jnp.float32))[..., None]
  v = embeddings * root
  y = assignments * root
  vtv = jnp.einsum("bkd,bke->bde", v, v)
  vty = jnp.einsum("bkd,bks->bds", v, y)
  yty = jnp.einsum("bks,bkt->bst", y, y)
  loss = (jnp.sum(vtv**2, axis=(1, 2)) - 2.0 * jnp.sum(vty**2, axis=(1, 2))
          + jnp.sum(yty**2, axis=(1, 2)))
  if normalize:
    loss = loss / jnp.maximum(jnp.sum(weights, axis=-1), 1.0) ** 2
  return loss


@functools.partial(jax.jit, static_argnames=("num_sources", "num_iters"))
def kmeans_masks(embeddings, num_sources, num_iters=20, weights=None):
  """K-means over each example's embeddings -> hard masks (deep clustering read-out).

  Deterministic: farthest-point initialisation from the largest-norm weighted embedding, then
  `num_iters` Lloyd iterations (fixed count, so it jits and vmaps).

  Args:
    embeddings: `[B, K, D]`; num_sources: number of clusters S.
    weights: optional `[B, K]`; bins with weight 0 do not move the centroids.
  Returns:
    masks `[B, K, S]` one-hot cluster memberships, centroids `[B, S, D]`.
  """
  embeddings = embeddings.astype(jnp.float32)
  if weights is None:
    weights = jnp.ones(embeddings.shape[:2], jnp.float32)

  def one_example(points, point_weights):
    active = point_weights > 0

    def squared_distances(centroids):
      return jnp.sum((points[:, None, :] - centroids[None, :, :])**2, axis=-1)

    first = jnp.argmax(jnp.where(active, jnp.sum(points**2, axis=-1), -jnp.inf))
    centroids = jnp.tile(points[first][None], (num_sources, 1))
    for index in range(1, num_sources):
      nearest = jnp.min(squared_distances(centroids[:index]), axis=-1)
      centroids = centroids.at[index].set(points[jnp.argmax(jnp.where(active, nearest, -1.0))])

    def lloyd(_, centroids):
      members = jax.nn.one_hot(jnp.argmin(squared_distances(centroids), axis=-1), num_sources)
      members = members * point_weights[:, None]
      counts = jnp.sum(members, axis=0)[:, None]
      means = members.T @ points / jnp.maximum(counts, 1e-8)
      return jnp.where(counts > 0, means, centroids)

    centroids = jax.lax.fori_loop(0, num_iters, lloyd, centroids)
    masks = jax.nn.one_hot(jnp.argmin(squared_distances(centroids), axis=-1), num_sources)
    return masks, centroids

  return jax.vmap(one_example)(embeddings, weights.astype(jnp.float32))
