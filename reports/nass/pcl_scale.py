"""Why the PCL term sat at its chance value (log 256 = 5.545) in the short GPU runs: the scale of
the sampled representation values against the sampler MLP's first layer, measured on a real
noisy test batch through an initialised model.

  python reports/nass/pcl_scale.py SHARDS_DIR [--entry=nass_sudormrf_mono] [--variant=gpu] \
      [--input_norms=none,standardize] [--json=OUT.json]

Prints, for each PCL `input_norm` (the seed's "none" and the project's "standardize",
spatialsep_jax/contrastive.py), the spread of the values entering the MLP at the K sampled
positions, of the cosine similarities query.positive and query.negative, the PCL value, and
the gradient norms of the PIT and PCL terms with respect to the parameters.
"""

import argparse
import json

import numpy as np


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("shards")
  parser.add_argument("--entry", default="nass_sudormrf_mono")
  parser.add_argument("--variant", default="gpu")
  parser.add_argument("--set", action="append", default=[])
  parser.add_argument("--input_norms", default="none,standardize")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  import jax
  import jax.numpy as jnp
  from data_pipeline import loader as loader_lib
  from spatialsep_jax import models, train
  from spatialsep_jax.launch import common
  config = common.load_named_config(args.entry, args.variant, args.set)
  config.model.dtype = "float32"
  model = models.build_model(config)
  batch = next(iter(loader_lib.make_loader(config, args.shards, "test", train=False,
                                           batch_size=2, process_index=0, process_count=1)))
  batch = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()
           if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
  state = train.init_state(config, model, train.make_optimizer(config), jax.random.key(0))
  reports = {}
  for input_norm in args.input_norms.split(","):
    config.loss.terms.pcl.input_norm = input_norm   # "none" = the term's default, the seed's
    reports[input_norm] = _measure(config, model, state, batch, input_norm)
  print(json.dumps(reports, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"config": f"{args.entry}:{args.variant} (float32, initial parameters, "
                           "2 test mixtures)", "by_input_norm": reports}, f, indent=1)


def _measure(config, model, state, batch, input_norm):
  import jax
  import jax.numpy as jnp
  from spatialsep_jax import contrastive, loss_terms, losses, train
  terms = {t.label: t for t in loss_terms.bind(config)}

  def term_value(params, label):
    outputs, _ = model.apply({"params": params}, batch["mixture"], train=True,
                             references=model.references(batch))
    return jnp.mean(terms[label](outputs, batch, jax.random.key(1))[0])

  outputs, _ = model.apply({"params": state.params}, batch["mixture"], train=True,
                           references=model.references(batch))
  head = outputs["pcl_head"]
  maps = outputs["pcl_decoder_inputs"]
  clean_maps = outputs["pcl_clean_encodings"]
  encoder_abs_mean = float(jnp.mean(jnp.abs(maps.sum(1))))
  if input_norm == "standardize":            # as the term does: whole maps before the conv
    maps = contrastive.standardize(maps, (-2, -1))
    clean_maps = contrastive.standardize(clean_maps, (-2, -1))
  rows, cols = contrastive.sample_positions(jax.random.key(1), maps.shape[-2] - 4,
                                            maps.shape[-1] - 4, 256)
  values = contrastive.patch_values(maps, head, rows, cols)            # [B, S', K]
  clean = contrastive.patch_values(clean_maps, head, rows, cols)
  raw_std = float(jnp.std(values))
  if input_norm == "standardize":            # ... and the K sampled values before the MLP
    values, clean = contrastive.standardize(values), contrastive.standardize(clean)
  refs = jnp.concatenate([batch["sources"], batch["noise"][:, None]], axis=1)
  _, perm = losses.pit(losses.pairwise_neg_sisdr(outputs["estimates"], refs))
  estimated = contrastive.embed(head, losses.reorder(values, perm))
  positive = contrastive.embed(head, clean)
  q, p, n = estimated[:, 0], positive[:, 0], estimated[:, -1]
  cos_qp = jnp.sum(q * p, -1)
  cos_qn = jnp.einsum("bkd,bjd->bkj", q, n)
  grads = {label: float(train._tree_norm(jax.grad(term_value)(state.params, label)))
           for label in terms}
  return {
      "input_norm": input_norm,
      "encoder_output_abs_mean": encoder_abs_mean,
      "sampled_conv_output_std": raw_std,
      "mlp_input_std": float(jnp.std(values)),
      "mlp_input_abs_max": float(jnp.max(jnp.abs(values))),
      "mlp1_bias_abs_mean": float(jnp.mean(jnp.abs(head["mlp1"]["bias"]))),
      "mlp1_kernel_abs_mean": float(jnp.mean(jnp.abs(head["mlp1"]["kernel"]))),
      "cos_query_positive_min_mean": [float(jnp.min(cos_qp)), float(jnp.mean(cos_qp))],
      "cos_query_negative_min_mean": [float(jnp.min(cos_qn)), float(jnp.mean(cos_qn))],
      "pcl_value": float(term_value(state.params, "pcl")),
      "pit_per_example": [float(v) for v in terms["pit"](outputs, batch, jax.random.key(1))[0]],
      "chance_value_log256": float(np.log(256)),
      "grad_norm_by_term": grads,
  }


if __name__ == "__main__":
  main()
