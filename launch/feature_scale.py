"""How much of the first (joint) global layer norm's variance each input part takes at init.

  python launch/feature_scale.py --config=configs/ild_ipd.py:smoke [--batches=4]

With `model.fusion=concat` the raw IPD (radians) and ILD (dB) maps are concatenated to the
encoder output before one global layer norm; whatever dominates that norm's variance
squeezes the rest. Prints, per part, its RMS and its share of the normalised variance,
on test mixtures of the configured data (rendered first when missing) and freshly
initialised parameters at the config's model size.
"""

import common
from absl import app, flags

flags.DEFINE_integer("batches", 4, "at most this many test batches of 8 mixtures")
FLAGS = flags.FLAGS
_CONFIG = common.define_config_flags()


def main(argv):
  del argv
  import flax.linen as nn
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
    length = -(-mixture.shape[1] // model.length_multiple) * model.length_multiple
    mixture = jnp.pad(mixture, ((0, 0), (0, length - mixture.shape[1]), (0, 0)))
    params = model.init(jax.random.key(config.seed), mixture[:1])["params"]
    encoder = nn.Conv(model.enc_basis, (model.enc_kernel,), strides=(model.enc_stride,),
                      padding=[(model.enc_padding, model.enc_padding)],
                      feature_group_count=model.num_input_channels)
    encoded = nn.relu(encoder.apply({"params": params["encoder"]}, mixture))
    feature_map = feature_lib.spatial_features(
        mixture, tuple(model.features), model.feature_pair, model.n_fft, model.enc_stride,
        n_frames=encoded.shape[1],
        center_offset=feature_lib.encoder_center_offset(model.enc_kernel, model.enc_padding),
        ild_clip_db=model.ild_clip_db)
    parts = {f"encoder output ({model.enc_basis} ch)": encoded}
    start = 0
    for kind in model.features:
      width = feature_lib.feature_dim(kind, model.n_fft)
      parts[f"{kind.upper()} map ({width} ch)"] = feature_map[..., start:start + width]
      start += width
    joint = jnp.concatenate(list(parts.values()), axis=-1)
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
