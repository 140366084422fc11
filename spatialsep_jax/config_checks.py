"""Config validation, in one place, before anything is compiled or rendered.

`check_config` checks the data and training sections here, then asks the chosen model
(`models.validate`, each model owns its section), the loss terms (`loss_terms.bind`) and the
evaluation task. Every failure is one line that names the field and how to fix it.
"""

from data_pipeline.array import CHANNEL_NAMES


class ConfigError(ValueError):
  pass


_CHOICES = {
    "data.target": ("direct", "reverberant"),
    "data.loader": ("auto", "tfdata", "grain"),
    "data.scene": ("simulated", "measured"),
    "data.host_audio_dtype": ("float32", "float16"),
}


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check_data_config(config) -> None:
  """The checks of `config.data` that rendering needs (run before any file is written)."""
  for field, choices in _CHOICES.items():
    value = _get(config, field)
    if value not in choices:
      raise ConfigError(f"config.{field}={value!r} is not one of {choices}")
  if not config.data.sample_rate or config.data.sample_rate <= 0:
    raise ConfigError(f"config.data.sample_rate={config.data.sample_rate} must be a positive rate "
                      "in Hz, e.g. 8000")
  if not config.data.segment_seconds or config.data.segment_seconds <= 0:
    raise ConfigError(f"config.data.segment_seconds={config.data.segment_seconds} must be > 0, "
                      "e.g. 4.0")


def check_config(config, num_devices: int = 1) -> None:
  """Raises ConfigError (one line) on the first problem found."""
  from spatialsep_jax import loss_terms, models, tasks
  check_data_config(config)
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
  if config.data.num_sources < 1:
    raise ConfigError(f"config.data.num_sources={config.data.num_sources} must be >= 1")
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
  try:
    models.validate(config)
    loss_terms.bind(config)
    task = tasks.get(config.eval.task)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if task.name == "separation" and config.data.num_sources < 2:
    raise ConfigError(f"config.eval.task='separation' needs config.data.num_sources >= 2 (got "
                      f"{config.data.num_sources}); use task='enhancement' for one target")
  from spatialsep_jax import metrics
  try:
    metrics.import_metric_modules(tuple(config.eval.get("metric_modules", ())))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  unknown = sorted(set(config.eval.metrics) - set(metrics.metric_names()))
  if unknown:
    raise ConfigError(f"config.eval.metrics names unknown metrics {unknown}; use some of "
                      f"{metrics.metric_names()} (a registered metric's module goes in "
                      "config.eval.metric_modules)")
