"""How much of the first (joint) global layer norm's variance each input part takes at init.

  python launch/feature_scale.py --config=configs/ild_ipd.py:smoke [--batches=4]

With `model.fusion=concat` the raw IPD (radians) and ILD (dB) maps are concatenated to the
encoder output before one global layer norm; whatever dominates that norm's variance
squeezes the rest. Prints, per part, its RMS and its share of the normalised variance,
on test mixtures of the configured data (rendered first when missing) and freshly
initialised parameters at the config's model size, read from the model itself
(the input of its first layer norm).
"""

from spatialsep_jax.launch import common
from absl import app, flags

flags.DEFINE_integer("batches", 4, "at most this many test batches of 8 mixtures")
FLAGS = flags.FLAGS
_CONFIG = common.define_config_flags()


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from data_pipeline import dataset, loader as loader_lib
  from spatialsep_jax import features as feature_lib, models
  config = _CONFIG.value
  model = common.call_or_fail(models.build, config)
  if not model.features or model.fusion != "concat":
    common.fail("this diagnostic is for concatenated features: give a config with "
                "model.features and model.fusion=concat (e.g. configs/ild_ipd.py)")
  shards = dataset.ensure_dataset(config)
  loader = iter(loader_lib.make_loader(config, shards, "test", train=False, batch_size=8))
  shares = {}
  for batch, _ in zip(loader, range(FLAGS.batches)):
    mixture = jnp.asarray(batch["mixture"], jnp.float32)
    params = model.init(jax.random.key(config.seed), mixture[:1])["params"]
    _, captured = model.apply({"params": params}, mixture, mutable=["intermediates"])
    joint, = captured["intermediates"]["input_norm_input"]  # what the model normalises
    parts = {f"encoder output ({model.enc_basis} ch)": joint[..., :model.enc_basis]}
    start = model.enc_basis
    for kind in model.features:
      width = feature_lib.feature_dim(kind, model.n_fft)
      parts[f"{kind.upper()} map ({width} ch)"] = joint[..., start:start + width]
      start += width
    mean = joint.mean(axis=(1, 2), keepdims=True)
    total = jnp.sum((joint - mean) ** 2, axis=(1, 2))
    for name, part in parts.items():
      share = jnp.sum((part - mean) ** 2, axis=(1, 2)) / total
      rms = jnp.sqrt(jnp.mean(part.astype(jnp.float32) ** 2))
      shares.setdefault(name, []).append((float(rms), float(share.mean())))
  print(f"{config.name}: joint global layer norm over {joint.shape[-1]} channels at init")
  for name, values in shares.items():
    rms, share = np.mean(values, axis=0)
    print(f"  {name:28s} rms {rms:8.3g}   share of variance {100 * share:6.2f}%")


if __name__ == "__main__":
  common.run(main)
