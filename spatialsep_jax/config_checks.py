"""Config validation that runs before anything is compiled or rendered.

Every failure is one line that names the field and how to fix it.
"""

from configs.base import CHANNEL_NAMES


class ConfigError(ValueError):
  pass


_CHOICES = {
    "data.target": ("direct", "reverberant"),
    "data.loader": ("auto", "tfdata", "grain"),
    "data.scene": ("simulated", "measured"),
    "data.host_audio_dtype": ("float32", "float16"),
    "model.name": ("sudormrf",),
    "model.fusion": ("concat", "attention"),
    "model.feature_norm": ("joint", "separate"),
    "model.dtype": ("float32", "bfloat16"),
    "model.depthwise_impl": ("slices", "xla", "slices_vjp"),
    "loss.name": ("neg_sisdr", "neg_snr"),
}
_FEATURES = ("ipd", "ild", "ipd_cossin")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check_config(config, num_devices: int = 1) -> None:
  """Raises ConfigError (one line) on the first problem found."""
  for field, choices in _CHOICES.items():
    value = _get(config, field)
    if value not in choices:
      raise ConfigError(f"config.{field}={value!r} is not one of {choices}")
  channels = tuple(config.data.input_channels)
  if not channels:
    raise ConfigError("config.data.input_channels is empty; name at least one of "
                      f"{CHANNEL_NAMES}")
  for name in channels + (config.data.reference_mic,):
    if name not in CHANNEL_NAMES:
      raise ConfigError(f"channel {name!r} (config.data.input_channels / reference_mic) is not "
                        f"in the {config.data.array} array; use one of {CHANNEL_NAMES}")
  if len(set(channels)) != len(channels):
    raise ConfigError(f"config.data.input_channels={channels} repeats a channel")
  features = tuple(config.model.features)
  for feature in features:
    if feature not in _FEATURES:
      raise ConfigError(f"config.model.features has {feature!r}; use a subset of {_FEATURES}")
  if features and len(channels) < 2:
    raise ConfigError(f"config.model.features={features} needs two input channels but "
                      f"config.data.input_channels={channels}; add a channel or drop the features")
  if config.model.fusion == "attention" and not features:
    raise ConfigError("config.model.fusion='attention' fuses spatial features; set "
                      "config.model.features (e.g. ('ipd',)) or use fusion='concat'")
  pair = tuple(config.model.feature_pair)
  if features and (len(pair) != 2 or pair[0] == pair[1]
                   or not all(0 <= p < len(channels) for p in pair)):
    raise ConfigError(f"config.model.feature_pair={pair} must name two different indices into "
                      f"config.data.input_channels={channels}")
  if config.model.enc_basis % len(channels):
    raise ConfigError(f"config.model.enc_basis={config.model.enc_basis} must be divisible by the "
                      f"{len(channels)} input channels (each mic gets an equal share of the basis)")
  if config.data.num_sources < 2:
    raise ConfigError("config.data.num_sources must be >= 2 for separation")
  for field in ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every",
                "keep_best", "eval_batches"):
    if int(config.train[field]) <= 0:
      raise ConfigError(f"config.train.{field}={config.train[field]} must be positive")
  import jax
  global_batch = config.train.batch_size
  if global_batch % num_devices:
    raise ConfigError(f"config.train.batch_size={global_batch} is not divisible by the "
                      f"{num_devices} devices; use a multiple of {num_devices}")
  if global_batch % jax.process_count():
    raise ConfigError(f"config.train.batch_size={global_batch} is not divisible by the "
                      f"{jax.process_count()} processes")
  if config.data.dynamic_mixing and not config.data.store_images:
    raise ConfigError("config.data.dynamic_mixing needs per-talker images in the shards; set "
                      "config.data.store_images=True (and re-render) or turn dynamic mixing off")
