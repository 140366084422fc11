"""Where the spatial feature map sits in a trained separator: its scale and its gradient.

Two steps (issue 13 part 2; reports/ipd_probe/):
  1. on the machine that holds the data, dump a few mixtures of a split:
       python launch/feature_probe.py --dump=probe_batch.npz --entry=bilateral --variant=gpu \
           [--set=...as trained] [--split=val] [--num=8]
  2. anywhere (CPU is enough), for exported runs (launch/export_pretrained.py folders):
       python launch/feature_probe.py --batch=probe_batch.npz --runs=pretrained/a,pretrained/b \
           [--out=probe.json]
For each run, at its trained parameters and at a fresh initialisation (the config's seed),
on the dumped mixtures, in float32:
  * feature_var_share: concatenated fusion only, the feature channels' share of the variance
    that the joint input norm divides by (deviations from the norm's mean over frames and
    channels, per mixture, summed);
  * feature_drive: the RMS of what the features add to the bottleneck input over the RMS of
    what the encoder adds (concat: the feature rows vs the encoder rows of `to_bottleneck`
    applied to the normalised input; zero-init branch: `feature_proj` output vs
    `to_bottleneck` output);
  * grad_rms_feature / grad_rms_encoder: RMS of the loss gradient over the parameters that
    read the features (concat: feature rows of `to_bottleneck` and the feature channels'
    input-norm gain and bias; branch: `feature_proj`) and over the parameters that read the
    encoder output (`to_bottleneck` encoder rows and their input-norm gain and bias);
  * loss: the batch's negative permutation-invariant SI-SDR (dB; two sources).
"""

import json
import os

from spatialsep_jax.launch import common
from absl import flags

flags.DEFINE_string("dump", None, "write a batch of --split mixtures to this .npz and stop")
flags.DEFINE_string("entry", "bilateral", "configs/<name>.py entry for --dump")
flags.DEFINE_string("variant", "gpu", "size variant for --dump")
flags.DEFINE_multi_string("set", [], "field overrides for --dump (as the runs were trained)")
flags.DEFINE_string("split", "val", "split for --dump")
flags.DEFINE_integer("num", 8, "mixtures to dump")
flags.DEFINE_string("batch", None, "the dumped .npz to probe with")
flags.DEFINE_list("runs", [], "exported run folders (config.json + params.msgpack)")
flags.DEFINE_string("out", None, "write the figures as JSON here")
FLAGS = flags.FLAGS


def dump(path: str) -> None:
  import numpy as np
  from data_pipeline import dataset, loader as loader_lib
  config = common.load_named_config(FLAGS.entry, FLAGS.variant, FLAGS.set)
  shards = dataset.ensure_dataset(config)
  batch = next(iter(loader_lib.make_loader(config, shards, FLAGS.split, train=False,
                                           batch_size=FLAGS.num)))
  np.savez_compressed(path, mixture=np.asarray(batch["mixture"], np.float32),
                      sources=np.asarray(batch["sources"], np.float32),
                      channels=np.array(list(config.data.input_channels)))
  print(f"dumped {FLAGS.num} {FLAGS.split} mixtures {batch['mixture'].shape} to {path}")


def neg_pit_sisdr(estimates, sources, eps=1e-8):
  """Mean negative SI-SDR (dB) under the better of the two source orders; [B, 2, T]."""
  import jax.numpy as jnp

  def sisdr(est, ref):
    ref = ref - ref.mean(-1, keepdims=True)
    est = est - est.mean(-1, keepdims=True)
    scale = (est * ref).sum(-1, keepdims=True) / ((ref * ref).sum(-1, keepdims=True) + eps)
    target = scale * ref
    return 10 * jnp.log10(((target ** 2).sum(-1) + eps) / (((est - target) ** 2).sum(-1) + eps))

  straight = sisdr(estimates[:, :2], sources).mean(-1)
  swapped = sisdr(estimates[:, 1::-1], sources).mean(-1)
  return -jnp.maximum(straight, swapped).mean()


def build_run(folder: str):
  """(model, params, saved config dict) of an exported folder, in float32."""
  import dataclasses
  import flax
  import jax
  import numpy as np
  from spatialsep_jax.configs import base  # noqa: F401  (configs importable)
  from spatialsep_jax import models
  import importlib
  import ml_collections
  with open(os.path.join(folder, "config.json")) as f:
    saved = json.load(f)
  module = importlib.import_module(saved["config_file"][:-3].replace("/", "."))
  config = module.get_config(saved["config_arg"])
  for section in ("data", "model"):
    for key, value in saved["config"][section].items():
      if key in config[section] and not isinstance(config[section][key], ml_collections.ConfigDict):
        current = config[section][key]
        config[section][key] = tuple(value) if isinstance(current, tuple) else value
  config.model.dtype = "float32"
  model = models.build(config)
  model = dataclasses.replace(model, feature_init=saved["config"]["model"].get("feature_init", "default"),
                              norm_impl="autodiff", remat="block", remat_blocks=-1)
  with open(os.path.join(folder, "params.msgpack"), "rb") as f:
    params = flax.serialization.msgpack_restore(f.read())
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  return model, params, saved


def probe(model, params, mixture, sources) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  mixture = jnp.asarray(mixture[..., :model.num_input_channels])
  sources = jnp.asarray(sources)

  def loss_fn(p, x, y):
    return neg_pit_sisdr(model.apply({"params": p}, x), y)

  # The audio is an argument, not a closed-over constant: XLA would constant-fold the STFT.
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, mixture, sources)
  wanted = ("input_norm", "to_bottleneck", "feature_proj")  # keep only what is measured
  keep = lambda module, method: method == "__call__" and module.name in wanted
  _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, capture_intermediates=keep,
                                              mutable=["intermediates"]))(params, mixture)
  inter = state["intermediates"]
  out = {"loss": float(loss)}
  e = model.enc_basis
  rms = lambda a: float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64))))) if a.size else float("nan")
  if not model.features:
    return out
  if model.zero_feature_branch:
    proj = inter["feature_proj"]["__call__"][0]
    bott = inter["to_bottleneck"]["__call__"][0]
    out["feature_drive"] = rms(proj) / rms(bott)
    out["grad_rms_feature"] = rms(grads["feature_proj"]["kernel"])
    out["grad_rms_encoder"] = rms(grads["to_bottleneck"]["dense"]["kernel"])
    return out
  if model.fusion != "concat":
    return out
  x = np.asarray(inter["input_norm_input"][0], np.float64)  # [B, L, E + F]
  dev = (x - x.mean(axis=(1, 2), keepdims=True)) ** 2
  out["feature_var_share"] = float(dev[..., e:].sum() / dev.sum())
  normed = np.asarray(inter["input_norm"]["__call__"][0], np.float64)
  kernel = np.asarray(params["to_bottleneck"]["dense"]["kernel"], np.float64)
  out["feature_drive"] = rms(normed[..., e:] @ kernel[e:]) / rms(normed[..., :e] @ kernel[:e])
  g_kernel = np.asarray(grads["to_bottleneck"]["dense"]["kernel"])
  g_norm = {k: np.asarray(v) for k, v in grads["input_norm"].items()}
  feature_part = np.concatenate([g_kernel[e:].ravel()] + [v[..., e:].ravel() for v in g_norm.values()])
  encoder_part = np.concatenate([g_kernel[:e].ravel()] + [v[..., :e].ravel() for v in g_norm.values()])
  out["grad_rms_feature"] = rms(feature_part)
  out["grad_rms_encoder"] = rms(encoder_part)
  return out


def main(argv):
  del argv
  common.setup_logging()
  if FLAGS.dump:
    dump(FLAGS.dump)
    return
  import jax
  import numpy as np
  if not FLAGS.batch or not FLAGS.runs:
    common.fail("give --dump=<npz>, or --batch=<npz> and --runs=<exported folders>")
  data = np.load(FLAGS.batch)
  results = {}
  for folder in FLAGS.runs:
    model, params, saved = build_run(folder)
    mixture = data["mixture"]
    init = model.init(jax.random.key(int(saved["config"]["seed"])),
                      mixture[:1, :, :model.num_input_channels])["params"]
    results[saved["name"]] = {"trained": probe(model, params, mixture, data["sources"]),
                              "init": probe(model, init, mixture, data["sources"])}
    print(saved["name"], json.dumps(results[saved["name"]]))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  common.run(main)
