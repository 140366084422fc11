import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax import losses


def _numpy_sisdr(e, r, eps=1e-12):
  e = e - e.mean()
  r = r - r.mean()
  alpha = (np.dot(e, r) + eps) / (np.dot(r, r) + eps)
  target = alpha * r
  return 10 * np.log10(np.sum(target**2) / (np.sum((e - target)**2) + eps) + eps)


def _numpy_snr(e, r, eps=1e-12):
  return 10 * np.log10(np.sum(r**2) / (np.sum((e - r)**2) + eps) + eps)


def _speech_level_reference(seed=3, length=8000):
  """A reference at a speech-like level (RMS 0.05) and a white-noise estimate."""
  rng = np.random.default_rng(seed)
  ref = 0.05 * rng.standard_normal(length)
  return ref.astype(np.float32), (0.05 * rng.standard_normal(length)).astype(np.float32)


def test_silence_and_vanishing_estimates_score_as_failures():
  ref, white = _speech_level_reference()
  def score(est):
    return float(-losses.pairwise_neg_sisdr(est[None, None], ref[None, None])[0, 0, 0])
  assert score(np.zeros_like(ref)) <= -60.0
  assert score(1e-10 * ref) <= -60.0
  assert score(ref) > 40.0
  assert score(1e-3 * ref) > 40.0
  # Independent white noise is a failure too, close to 10 log10(1 / T) for unit projections.
  assert score(white) < -20.0
  assert abs(score(white) - _numpy_sisdr(white.astype(np.float64), ref.astype(np.float64))) < 1e-2
  # SNR: an all-zero estimate is exactly 0 dB (the error equals the reference).
  snr_zero = float(-losses.pairwise_neg_snr(np.zeros_like(ref)[None, None], ref[None, None])[0, 0, 0])
  assert abs(snr_zero) < 1e-4


@pytest.mark.parametrize("name,pairwise_fn,reference_fn", [
    ("sisdr", losses.pairwise_neg_sisdr, _numpy_sisdr),
    ("snr", losses.pairwise_neg_snr, _numpy_snr),
])
def test_pairwise_matches_double_loop(name, pairwise_fn, reference_fn):
  rng = np.random.default_rng(0)
  est = rng.standard_normal((2, 3, 200)).astype(np.float32)
  ref = rng.standard_normal((2, 2, 200)).astype(np.float32) + 0.5 * est[:, :2]
  got = np.asarray(pairwise_fn(est, ref))
  expected = np.array([[[-reference_fn(est[b, n].astype(np.float64), ref[b, m].astype(np.float64))
                         for m in range(2)] for n in range(3)] for b in range(2)])
  np.testing.assert_allclose(got, expected, atol=1e-3)


def test_sisdr_of_known_snr_and_scaled_copy():
  rng = np.random.default_rng(1)
  ref = rng.standard_normal(4000)
  ref -= ref.mean()
  noise = rng.standard_normal(4000)
  noise -= noise.mean()
  noise -= np.dot(noise, ref) / np.dot(ref, ref) * ref
  noise *= np.sqrt(np.sum(ref**2) / np.sum(noise**2) / 10**(12.0 / 10))
  est = 3.0 * ref + 3.0 * noise
  value = -losses.pairwise_neg_sisdr(est[None, None].astype(np.float32),
                                     ref[None, None].astype(np.float32))[0, 0, 0]
  assert abs(float(value) - 12.0) < 0.01
  scaled = -losses.pairwise_neg_sisdr(0.5 * ref[None, None], ref[None, None])[0, 0, 0]
  assert float(scaled) > 60.0


@pytest.mark.parametrize("num_sources", [2, 3])
def test_pit_exhaustive_matches_brute_force(num_sources):
  pairwise = np.random.default_rng(num_sources).standard_normal((5, num_sources, num_sources))
  loss, perm = losses.pit(jnp.asarray(pairwise, jnp.float32))
  for b in range(5):
    costs = {p: np.mean([pairwise[b, p[m], m] for m in range(num_sources)])
             for p in itertools.permutations(range(num_sources))}
    best = min(costs, key=costs.get)
    assert tuple(np.asarray(perm[b])) == best
    np.testing.assert_allclose(loss[b], costs[best], rtol=1e-5)


def test_pit_hungarian_matches_brute_force():
  pairwise = np.random.default_rng(5).standard_normal((4, 5, 5)).astype(np.float32)
  loss, perm = losses.pit(jnp.asarray(pairwise))
  for b in range(4):
    costs = {p: np.mean([pairwise[b, p[m], m] for m in range(5)])
             for p in itertools.permutations(range(5))}
    best = min(costs, key=costs.get)
    np.testing.assert_allclose(loss[b], costs[best], rtol=1e-5)
    assert tuple(np.asarray(perm[b])) == best


def test_pit_with_extra_output_leaves_it_unpaired():
  pairwise = np.random.default_rng(6).standard_normal((3, 3, 2)).astype(np.float32)
  loss, perm = losses.pit(jnp.asarray(pairwise))
  for b in range(3):
    costs = {p: np.mean([pairwise[b, p[m], m] for m in range(2)])
             for p in itertools.permutations(range(3), 2)}
    np.testing.assert_allclose(loss[b], min(costs.values()), rtol=1e-5)


@pytest.mark.parametrize("num_sources", [2, 5])
def test_pit_gradient_flows_only_through_chosen_pairing(num_sources):
  pairwise = jnp.asarray(
      np.random.default_rng(7).standard_normal((2, num_sources, num_sources)), jnp.float32)
  grad = jax.grad(lambda p: jnp.sum(losses.pit(p)[0]))(pairwise)
  _, perm = losses.pit(pairwise)
  expected = np.zeros(pairwise.shape, np.float32)
  for b in range(2):
    expected[b, np.asarray(perm[b]), np.arange(num_sources)] = 1.0 / num_sources
  np.testing.assert_allclose(grad, expected, atol=1e-7)


def test_separation_loss_recovers_swap_clamps_and_is_float32_for_bf16():
  rng = np.random.default_rng(8)
  ref = rng.standard_normal((2, 2, 800)).astype(np.float32)
  est = ref[:, ::-1] + 0.1 * rng.standard_normal((2, 2, 800)).astype(np.float32)
  loss, aux = losses.separation_loss(jnp.asarray(est, jnp.bfloat16), jnp.asarray(ref))
  assert loss.dtype == jnp.float32 and aux["per_example"].dtype == jnp.float32
  np.testing.assert_array_equal(aux["perm"], [[1, 0], [1, 0]])
  np.testing.assert_allclose(losses.reorder(jnp.asarray(est), aux["perm"]), ref, atol=0.5)
  assert -22 < float(loss) < -18
  perfect, aux = losses.separation_loss(jnp.asarray(ref), jnp.asarray(ref), clamp_db=30.0)
  assert float(perfect) == -30.0
  grad = jax.grad(lambda e: losses.separation_loss(e, jnp.asarray(ref))[0])(jnp.asarray(ref))
  assert float(jnp.max(jnp.abs(grad))) == 0.0
  snr_loss, _ = losses.separation_loss(jnp.asarray(est), jnp.asarray(ref), name="neg_snr")
  assert -22 < float(snr_loss) < -18
  with pytest.raises(ValueError, match="unknown loss"):
    losses.separation_loss(jnp.asarray(est), jnp.asarray(ref), name="l1")


def test_ideal_masks_closed_form():
  sources = np.array([[[[3 + 4j, 0.0]], [[0.0, 1j]]]])  # [B=1, S=2, L=1, F=2]
  np.testing.assert_array_equal(losses.ideal_binary_mask(sources)[0, :, 0], [[1, 0], [0, 1]])
  sources = np.array([[[[3.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]]]])
  irm = np.asarray(losses.ideal_ratio_mask(sources))[0, :, 0]
  np.testing.assert_allclose(irm, [[0.75, 0.5, 0.5], [0.25, 0.5, 0.5]], atol=1e-6)
  irm2 = np.asarray(losses.ideal_ratio_mask(sources, power=2.0))[0, :, 0]
  np.testing.assert_allclose(irm2[:, 0], [0.9, 0.1], atol=1e-6)


def test_deep_clustering_low_rank_equals_brute_force():
  rng = np.random.default_rng(9)
  embeddings = rng.standard_normal((2, 30, 4)).astype(np.float32)
  assignments = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (2, 30))]
  weights = rng.uniform(0, 1, (2, 30)).astype(np.float32)
  got = losses.deep_clustering_loss(embeddings, assignments, weights, normalize=False)
  for b in range(2):
    w = np.sqrt(weights[b])[:, None]
    v, y = embeddings[b] * w, assignments[b] * w
    expected = np.sum((v @ v.T - y @ y.T)**2)
    np.testing.assert_allclose(got[b], expected, rtol=1e-4)
  normalized = losses.deep_clustering_loss(embeddings, assignments, weights)
  np.testing.assert_allclose(normalized, got / weights.sum(-1)**2, rtol=1e-5)


def test_deep_clustering_targets_and_kmeans_masks_recover_clusters():
  rng = np.random.default_rng(10)
  sources = rng.standard_normal((1, 2, 4, 5)) + 1j * rng.standard_normal((1, 2, 4, 5))
  assignments, weights = losses.deep_clustering_targets(sources, threshold_db=200.0)
  np.testing.assert_array_equal(
      assignments[0], np.moveaxis(np.asarray(losses.ideal_binary_mask(sources))[0], 0, -1)
      .reshape(20, 2))
  assert float(weights.min()) == 1.0
  # Embeddings built from the assignments plus small noise: k-means must find the partition.
  centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  embeddings = np.asarray(assignments)[0] @ centres + 0.05 * rng.standard_normal((20, 3))
  masks, _ = losses.kmeans_masks(embeddings[None], num_sources=2)
  labels = np.argmax(np.asarray(masks)[0], -1)
  truth = np.argmax(np.asarray(assignments)[0], -1)
  assert np.all(labels == truth) or np.all(labels == 1 - truth)
