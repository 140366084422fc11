"""Noise-aware separation (NASS, seed 002): the patch-wise contrastive loss against numpy, the
noise output's permutation handling, where PCL's gradient may and may not go, parameter
counts, and the smoke configurations trained through the generic trainer on noisy scenes."""

import itertools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from spatialsep_jax import contrastive, loss_terms, models, sdr, tasks, train
from spatialsep_jax.configs import nass_dualpath, nass_sudormrf_mono
from spatialsep_jax.models import dual_path
from tests.conftest import with_overrides


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_info_nce(query, positive, negatives, temperature, num_negatives=0):
  """The seed's PatchNCE written out per query: [q.p, q.n_j ...] with q_k.n_k = -10 (all K
  negatives) or the M positions after k; -log softmax of entry 0."""
  num_queries = len(query)
  out = np.zeros(num_queries)
  for k in range(num_queries):
    if num_negatives:
      negative = [query[k] @ negatives[(k + m) % num_queries] for m in range(1, num_negatives + 1)]
    else:
      negative = [-10.0 if j == k else query[k] @ negatives[j] for j in range(num_queries)]
    logits = np.array([query[k] @ positive[k]] + negative) / temperature
    out[k] = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[0]
  return out


@pytest.mark.parametrize("temperature,num_negatives", [(0.07, 0), (0.5, 0), (0.07, 2)])
def test_info_nce_matches_numpy_with_the_overwritten_diagonal(temperature, num_negatives):
  rng = np.random.default_rng(0)
  query, positive, negatives = (_unit(rng.normal(size=(7, 5))) for _ in range(3))
  got = contrastive.info_nce(jnp.asarray(query), jnp.asarray(positive), jnp.asarray(negatives),
                             temperature, num_negatives)
  np.testing.assert_allclose(got, _numpy_info_nce(query, positive, negatives, temperature,
                                                  num_negatives), rtol=1e-4, atol=1e-4)


def _head(embed_dim=8, seed=0):
  return contrastive.PatchHead(embed_dim).apply(
      contrastive.PatchHead(embed_dim).init(jax.random.key(seed)))


def _numpy_embed(head, values):
  h = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in head.items()}
  hidden = np.maximum(values[..., None] * h["mlp1"]["kernel"] + h["mlp1"]["bias"], 0)
  out = hidden @ h["mlp2"]["kernel"] + h["mlp2"]["bias"]
  return out / (np.linalg.norm(out, axis=-1, keepdims=True) + contrastive.NORM_EPS)


def _numpy_conv_maps(head, maps):
  """conv -> ReLU -> conv over whole [H, W] maps (scipy's valid cross-correlation)."""
  h = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in head.items()}
  conv = lambda x, layer: signal.correlate2d(x, layer["kernel"], mode="valid") + layer["bias"]
  flat = maps.reshape((-1,) + maps.shape[-2:])
  out = [conv(np.maximum(conv(m, h["conv1"]), 0), h["conv2"]) for m in flat]
  return np.stack(out).reshape(maps.shape[:-2] + out[0].shape)


def _pcl_case(seed=0, num_frames=12, basis=10):
  """Outputs whose estimates are [noise, s2, s1] exactly (PIT perm [2, 1, 0])."""
  rng = np.random.default_rng(seed)
  batch_size, length = 2, 400
  sources = rng.normal(size=(batch_size, 2, length)).astype(np.float32)
  noise = rng.normal(size=(batch_size, length)).astype(np.float32)
  estimates = np.stack([noise, sources[:, 1], sources[:, 0]], axis=1)
  outputs = {"estimates": jnp.asarray(estimates),
             "pcl_decoder_inputs": jnp.asarray(rng.normal(size=(batch_size, 3, num_frames, basis)),
                                               jnp.float32),
             "pcl_clean_encodings": jnp.asarray(rng.normal(size=(batch_size, 3, num_frames, basis)),
                                                jnp.float32),
             "pcl_head": _head()}
  return outputs, {"sources": jnp.asarray(sources), "noise": jnp.asarray(noise)}


def _numpy_standardize(values, axes=(-1,)):
  """input_norm="standardize": to zero mean, unit (population) std over `axes`."""
  return (values - values.mean(axes, keepdims=True)) / (values.std(axes, keepdims=True)
                                                        + contrastive.STANDARDIZE_EPS)


@pytest.mark.parametrize("direction,input_norm", [("s->n", "none"), ("n->s", "none"),
                                                  ("s->n", "standardize"),
                                                  ("n->s", "standardize")])
def test_pcl_term_matches_brute_force_numpy(direction, input_norm):
  """Same K positions (from the term's key) for every map, conv over the whole map then
  sampled, (standardised per map over its K values,) MLP + L2, talkers reordered by the PIT
  perm over [s1, s2, n], averaged."""
  outputs, batch = _pcl_case()
  key, num_positions, temperature = jax.random.key(3), 16, 0.07
  got, _ = contrastive.patch_contrastive_loss(outputs, batch, key, num_positions=num_positions,
                                              temperature=temperature, direction=direction,
                                              input_norm=input_norm)
  maps = np.asarray(outputs["pcl_decoder_inputs"], np.float64)
  clean = np.asarray(outputs["pcl_clean_encodings"], np.float64)
  height, width = maps.shape[-2] - 4, maps.shape[-1] - 4
  rows, cols = contrastive.sample_positions(key, height, width, num_positions)
  rows, cols = np.asarray(rows), np.asarray(cols)
  assert len(set(zip(rows.tolist(), cols.tolist()))) == num_positions   # distinct positions
  head = outputs["pcl_head"]
  norm = _numpy_standardize if input_norm == "standardize" else (lambda values, axes=(): values)
  # standardised: whole maps before the conv, then each map's K sampled outputs before the MLP
  estimated = _numpy_embed(head, norm(_numpy_conv_maps(head, norm(maps, (-2, -1)))[..., rows, cols]))
  clean = _numpy_embed(head, norm(_numpy_conv_maps(head, norm(clean, (-2, -1)))[..., rows, cols]))
  perm = [2, 1, 0]                   # estimate index of s1, s2, noise
  expected = []
  for b in range(2):
    per_talker = []
    for talker in range(2):
      if direction == "s->n":
        q, p, n = estimated[b, perm[talker]], clean[b, talker], estimated[b, perm[2]]
      else:
        q, p, n = estimated[b, perm[2]], clean[b, 2], estimated[b, perm[talker]]
      per_talker.append(_numpy_info_nce(q, p, n, temperature).mean())
    expected.append(np.mean(per_talker))
  np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("input_norm", ["none", "standardize"])
def test_pcl_gradient_reaches_queries_and_head_only(input_norm):
  """s->n: no gradient reaches the clean encodings (targets' path) or the noise estimate's
  map (negatives); the talkers' maps (queries) and the head get one."""
  outputs, batch = _pcl_case(1)
  key = jax.random.key(0)

  def loss(differentiable):
    return jnp.sum(contrastive.patch_contrastive_loss({**outputs, **differentiable}, batch, key,
                                                      num_positions=16, input_norm=input_norm)[0])

  grads = jax.jit(jax.grad(loss))({k: outputs[k] for k in ("pcl_decoder_inputs",
                                                           "pcl_clean_encodings", "pcl_head")})
  assert float(jnp.abs(grads["pcl_clean_encodings"]).max()) == 0.0
  maps = grads["pcl_decoder_inputs"]
  assert float(jnp.abs(maps[:, 0]).max()) == 0.0            # output 0 is the noise estimate
  assert float(jnp.abs(maps[:, 1]).max()) > 0 and float(jnp.abs(maps[:, 2]).max()) > 0
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["pcl_head"]))


def test_pcl_standardize_leaves_the_chance_value_where_the_seed_scale_sits_on_it():
  """The short-budget failure (reports/nass/README.md): maps whose sampled values vary by ~0.01
  under a PyTorch-default head give the seed's form log K to 1e-2 and near-identical
  embeddings; input_norm="standardize" on the same maps (the talkers' estimated maps equal to
  their clean encodings, a perfect estimate) gives a loss well below log K (2.87 and 2.92 vs
  4.16 when written)."""
  rng = np.random.default_rng(4)
  batch_size, num_frames, basis, num_positions = 2, 20, 24, 64
  outputs, batch = _pcl_case(2)
  clean = 0.01 * rng.normal(size=(batch_size, 3, num_frames, basis))
  # estimates [noise, s2, s1] (PIT perm [2, 1, 0]); talkers' maps equal their clean encodings
  estimated = np.stack([clean[:, 2], clean[:, 1], clean[:, 0]], axis=1)
  outputs.update(pcl_decoder_inputs=jnp.asarray(estimated, jnp.float32),
                 pcl_clean_encodings=jnp.asarray(clean, jnp.float32), pcl_head=_head(256, seed=1))
  key = jax.random.key(5)
  seed_form, _ = contrastive.patch_contrastive_loss(outputs, batch, key,
                                                    num_positions=num_positions)
  normed, _ = contrastive.patch_contrastive_loss(outputs, batch, key, num_positions=num_positions,
                                                 input_norm="standardize")
  chance = np.log(num_positions)
  np.testing.assert_allclose(seed_form, chance, atol=1e-2)
  assert float(jnp.max(normed)) < chance - 0.75
  with pytest.raises(loss_terms.LossConfigError, match="input_norm"):
    contrastive.patch_contrastive_loss(outputs, batch, key, num_positions=8, input_norm="rms")


def test_pclnorm_token_sets_the_option_and_leaves_the_seed_config_unchanged():
  """`:pclnorm` adds input_norm="standardize" to the pcl term only; the seed's NASS config
  keeps its settings (no input_norm key), hence its fingerprint."""
  seed_config = nass_sudormrf_mono.get_config("smoke")
  normed = nass_sudormrf_mono.get_config("smoke,pclnorm")
  assert "input_norm" not in seed_config.loss.terms.pcl
  assert normed.loss.terms.pcl.input_norm == "standardize"
  assert normed.name == seed_config.name + "_pclnorm"
  normed.loss.terms.pcl.input_norm = "none"           # the term's default is the seed's form
  assert dict(normed.loss.terms.pcl) == {**dict(seed_config.loss.terms.pcl), "input_norm": "none"}
  with pytest.raises(ValueError, match="contrastive loss"):
    nass_sudormrf_mono.get_config("smoke,baseline,pclnorm")


def test_clean_signals_path_gets_no_gradient_and_shares_the_encoder():
  """`encode_with_clean` (what both models call): one pass of the encoder over mixture and
  clean signals, the clean encodings equal to encoding them alone, and no gradient through
  them to the clean signals or (from them) to the encoder's parameters."""
  rng = np.random.default_rng(0)
  mixture = jnp.asarray(rng.normal(size=(2, 40, 1)), jnp.float32)
  clean = jnp.asarray(rng.normal(size=(2, 3, 40, 1)), jnp.float32)
  encoder = nn.Conv(8, (4,), strides=(2,), padding="VALID")
  weights = encoder.init(jax.random.key(0), mixture)
  encode = lambda w: (lambda x: nn.relu(encoder.apply(w, x)))

  def clean_part(w, c):
    return jnp.sum(contrastive.encode_with_clean(encode(w), mixture, c)[1] ** 2)

  def mixture_part(w, c):
    return jnp.sum(contrastive.encode_with_clean(encode(w), mixture, c)[0] ** 2)

  encoded, clean_encoded = contrastive.encode_with_clean(encode(weights), mixture, clean)
  np.testing.assert_allclose(clean_encoded[:, 1], encode(weights)(clean[:, 1]), rtol=1e-6)
  np.testing.assert_allclose(encoded, encode(weights)(mixture), rtol=1e-6)
  grad_w, grad_c = jax.grad(clean_part, argnums=(0, 1))(weights, clean)
  assert float(jnp.abs(grad_c).max()) == 0.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad_w))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(
      jax.grad(mixture_part)(weights, clean)))


def test_patch_values_equal_full_convolution_then_gather():
  head = _head()
  maps = np.random.default_rng(2).normal(size=(2, 3, 9, 11)).astype(np.float32)
  rows, cols = contrastive.sample_positions(jax.random.key(5), 5, 7, 12)
  got = contrastive.patch_values(jnp.asarray(maps), head, rows, cols)
  np.testing.assert_allclose(got, _numpy_conv_maps(head, maps.astype(np.float64))[..., rows, cols],
                             rtol=1e-5, atol=1e-5)


def _brute_force_talkers(estimates, sources, noise):
  """Best summed SI-SDR over every order of the S + 1 outputs, by itertools."""
  out = []
  for est, src, n in zip(estimates, sources, noise):
    refs = np.concatenate([src, n[None]])
    best = max(itertools.permutations(range(len(est))),
               key=lambda p: sum(sdr.sisdr_db(est[p[m]], refs[m], np) for m in range(len(refs))))
    out.append(est[list(best)][:len(src)])
  return np.stack(out)


def test_noisy_separation_task_reorders_by_the_permutation_over_talkers_and_noise():
  rng = np.random.default_rng(4)
  batch_size, length = 6, 500
  sources = rng.normal(size=(batch_size, 2, length)).astype(np.float32)
  noise = rng.normal(size=(batch_size, length)).astype(np.float32)
  refs = np.concatenate([sources, noise[:, None]], axis=1)
  estimates = np.einsum("bij,bjt->bit", rng.normal(size=(batch_size, 3, 3)) ** 3, refs)
  estimates = estimates.astype(np.float32)
  # An example whose noise output resembles talker 0 more than talker 0's own output does
  # in isolation, but the joint pairing keeps the noise output on the noise.
  estimates[0] = np.stack([noise[0] + 0.9 * sources[0, 0], sources[0, 1],
                           sources[0, 0] + 0.8 * noise[0]])
  batch = {"sources": sources, "noise": noise, "mixture_reference": refs.sum(1)}
  config = nass_sudormrf_mono.get_config("smoke")
  task = tasks.get("noisy_separation")
  expected = _brute_force_talkers(estimates.astype(np.float64), sources, noise)
  for i in range(batch_size):
    est, ref, baseline = task.example(estimates[i], batch, i, config)
    np.testing.assert_allclose(est, expected[i], rtol=1e-6)
    np.testing.assert_array_equal(ref, sources[i])
  np.testing.assert_allclose(expected[0], [sources[0, 0] + 0.8 * noise[0], sources[0, 1]],
                             rtol=1e-6)
  scores = task.score_jax({"estimates": jnp.asarray(estimates)},
                          {k: jnp.asarray(v) for k, v in batch.items()}, config)
  want = sdr.sisdr_db(expected, sources.astype(np.float64), np).mean(-1)
  np.testing.assert_allclose(scores["sisdr"], want, rtol=1e-3, atol=1e-3)
  # pit_sisdr with the noise stem permuted picks the same pairing (loss = -mean best SI-SDR).
  loss, metrics = loss_terms.pit_sisdr({"estimates": jnp.asarray(estimates)},
                                       {"sources": jnp.asarray(sources), "noise": jnp.asarray(noise)},
                                       None, stems=("noise",), extra_outputs="permute",
                                       clamp_db=0.0)
  perm = np.asarray(metrics["perm"])
  reordered = np.take_along_axis(estimates, perm[:, :, None], axis=1)[:, :2]
  np.testing.assert_allclose(reordered, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="model.extra_outputs=1"):
    task.score_jax({"estimates": jnp.asarray(estimates[:, :2])},
                   {k: jnp.asarray(v) for k, v in batch.items()}, config)


def test_parameter_counts_of_the_noise_output_and_the_training_only_head():
  """The seed's figures: the extra mask head of a SepFormer (N = 256) adds 65,792 parameters;
  the PCL sampler (conv 2 x 10 + MLP 1-256-256) 66,324, all under params['pcl_head'], which
  `inference_params` (exports, counts) drops."""
  def count(module_fields, extra):
    module = dual_path.DualPathTransformer(extra_outputs=extra, **module_fields)
    return models.count_params(models.abstract_params(module, 800))
  seed_size = dict(enc_basis=256, model_dim=256, num_blocks=1, layers_per_path=1, num_heads=8,
                   ff_dim=64, chunk_size=50)
  assert count(seed_size, 1) - count(seed_size, 0) == 65_792 == 256 * 256 + 256
  config = nass_sudormrf_mono.get_config("smoke")
  params = models.abstract_params(models.build(config), 800)
  assert models.count_params(params["pcl_head"]) == 66_324
  nopcl = models.abstract_params(models.build(nass_sudormrf_mono.get_config("smoke,nopcl")), 800)
  assert models.count_params(contrastive.inference_params(params)) == models.count_params(nopcl)
  baseline = models.abstract_params(models.build(nass_sudormrf_mono.get_config("smoke,baseline")),
                                    800)
  basis = config.model.enc_basis   # one more output: mask conv (E + 1) + bias, decoder E x 21 + bias
  assert (models.count_params(nopcl) - models.count_params(baseline)
          == basis + 1 + 1 + basis * config.model.enc_kernel + 1)


def test_chunking_round_trip_and_inference_without_the_head():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 37, 3)), jnp.float32)
  np.testing.assert_allclose(dual_path.from_chunks(dual_path.to_chunks(x, 10), 37), 2 * x,
                             rtol=1e-6)
  config = nass_dualpath.get_config("smoke")
  model = models.build_model(config)
  mixture = jnp.zeros((1, 800, 1))
  variables = model.init(jax.random.key(0), mixture)
  assert "pcl_head" in variables["params"]
  estimates = jax.jit(model.estimates)(
      {"params": contrastive.inference_params(variables["params"])}, mixture)
  assert estimates.shape == (1, 3, 800)


SMOKE_SIZES = dict(data__num_examples__train=4, data__num_examples__val=4,
                   data__num_examples__test=4, data__examples_per_shard=4,
                   data__segment_seconds=0.5)


@pytest.fixture(scope="module")
def noisy_smoke_shards(tmp_path_factory, smoke_cache_dir):
  """A tiny noisy render (diffuse noise at -6..3 dB speech-to-noise)."""
  from data_pipeline import dataset
  config = with_overrides(nass_dualpath.get_config("smoke"), **SMOKE_SIZES)
  config.data.cache_dir = smoke_cache_dir
  directory = str(tmp_path_factory.mktemp("nass_shards"))
  dataset.render(config, directory, num_workers=2, progress=False)
  return directory


def test_smoke_nass_config_trains_validates_and_evaluates(noisy_smoke_shards, smoke_cache_dir,
                                                          tmp_path):
  """Two steps of nass_dualpath:smoke through train.train_and_evaluate on noisy scenes (PIT
  over talkers + noise, PCL through the model's train inputs, the noisy_separation task's jax
  path in validation; its numpy path, the one of evaluation rows, is tested above)."""
  config = with_overrides(nass_dualpath.get_config("smoke"), **SMOKE_SIZES, train__num_steps=2,
                          train__eval_every=2, train__checkpoint_every=2, train__log_every=1,
                          train__batch_size=4, eval__max_examples=4)
  config.data.shards_dir, config.data.cache_dir = noisy_smoke_shards, smoke_cache_dir
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(config, workdir, progress=False)
  assert result["step"] == 2
  assert np.isfinite(result["last"]["loss/pcl"]) and result["last"]["loss/pcl"] > 0
  assert np.isfinite(result["best"]["val_sisdri"])
  assert os.path.isdir(os.path.join(workdir, "checkpoints"))


def test_report_pairs_by_example_with_a_student_t_interval_and_reads_logs(tmp_path):
  """launch/nass_tools.py report's arithmetic: the paired A - B mean and 95% Student-t CI over
  the examples both runs scored (scipy), a subset by SNR; the PCL log table's chance value
  (log K, log(M + 1) with M < K negatives); the step table's overhead over `:nopcl`."""
  import json
  from scipy import stats
  from spatialsep_jax.launch import nass_tools
  rng = np.random.default_rng(0)
  a = {i: {"sisdr_improvement": float(v), "snr_db": float(s)}
       for i, (v, s) in enumerate(zip(rng.normal(2, 1, 12), np.linspace(-6, 3, 12)))}
  b = {i: {"sisdr_improvement": float(v), "snr_db": a[i]["snr_db"]}
       for i, v in enumerate(rng.normal(1.5, 1, 10))}      # two examples unscored in B
  got = nass_tools.paired(a, b, "sisdr_improvement", lambda r: r["snr_db"] < 0)
  ids = [i for i in range(10) if a[i]["snr_db"] < 0]
  diff = np.array([a[i]["sisdr_improvement"] - b[i]["sisdr_improvement"] for i in ids])
  half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
  assert got["n"] == len(ids)
  np.testing.assert_allclose([got["diff"], *got["ci"]],
                             [diff.mean(), diff.mean() - half, diff.mean() + half], rtol=1e-9)
  for name, negatives, values in (("full", 0, [5.6, 5.2]), ("m1", 1, [0.7, 0.6])):
    os.makedirs(tmp_path / name / "logs")
    with open(tmp_path / name / "config.json", "w") as f:
      json.dump({"config": {"loss": {"terms": {"pcl": {"num_positions": 256,
                                                       "num_negatives": negatives}}}}}, f)
    with open(tmp_path / name / "logs" / "metrics.jsonl", "w") as f:
      for step, value in zip((10, 20), values):
        f.write(json.dumps({"step": step, "loss/pcl": value}) + "\n")
      f.write(json.dumps({"step": 20, "val_sisdri": 1.25}) + "\n")
  lines = nass_tools.training_lines(str(tmp_path), ["full", "m1"])
  assert f"| 5.600 | 5.200 | 5.200 | {np.log(256):.3f} | 1.25@20 |" in lines[4]
  assert f"| 0.700 | 0.600 | 0.600 | {np.log(2):.3f} | 1.25@20 |" in lines[5]
  with open(tmp_path / "results.jsonl", "w") as f:
    for config, ms in (("m:nopcl", 100.0), ("m", 104.0), ("m:pclnorm", 112.5)):
      f.write(json.dumps({"benchmark": "step", "config": config, "batch_size": 16,
                          "step_ms": ms}) + "\n")
  table = "\n".join(nass_tools.bench_lines(str(tmp_path)))
  assert "| m | 16 |" in table and "+4.0%" in table and "+12.5%" in table
