"""Separate recordings with a trained or a shipped pretrained model, in a few lines:

  from spatialsep_jax.separator import Separator
  separator = Separator.from_pretrained("bilateral")        # pretrained/<name>/ or a folder
  separator = Separator.from_workdir("runs/bilateral")      # a run of launch/train.py
  streams = separator.separate("mix.wav")                   # [S, T] numpy at the file's rate
  streams = separator.separate(audio, rate=16000)           # [T], [T, C] (or [C, T]) arrays
  paths = separator.separate_file("mix.wav", "out/")        # out/mix_talker1.wav, ...

Inputs may have the model's channels (config.data.input_channels, in that order) or all six
channels of the CI array; any rate (resampled to the model's and back); any length (chunks
that keep one talker per stream, `inference.separate_long`). Outputs are at the input's level;
a silent input gives silent outputs (and a warning); NaN/inf input is refused.

A pretrained folder holds (the format `export_pretrained` writes):
  config.json     {"name", "config_file": "configs/<file>.py", "config_arg", "config": the
                  config as a dict, "fingerprint"}
  params.msgpack  flax.serialization.msgpack_serialize of the `params` collection (floating
                  arrays in float16)
  metrics.json, MODEL_CARD.md
The config is rebuilt as `get_config(config_arg)` of `config_file` with the saved values laid
over it (fields added to the configs later keep their defaults).
"""

import importlib
import io
import json
import logging
import os

import numpy as np

from spatialsep_jax import inference, io_safety

LOG = logging.getLogger("spatialsep_jax.separator")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The repository's pretrained/ (a clone, an editable install), else the copy a wheel installs
# inside the package; configs/ wherever `spatialsep_jax.configs` is installed from.
PRETRAINED_DIR = next((d for d in (os.path.join(ROOT, "pretrained"),
                                   os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "pretrained")) if os.path.isdir(d)),
                      os.path.join(ROOT, "pretrained"))
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
if not os.path.isdir(CONFIGS_DIR):  # an editable install maps the package to the top folder
  CONFIGS_DIR = os.path.join(ROOT, "configs")
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_PCM_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32")


def _estimates(outputs):
  """The [B, S', T] waveforms of a model's outputs: a bare array (today's SuDoRM-RF) or a dict
  of named outputs with "estimates" (the model registry's contract)."""
  if isinstance(outputs, dict):
    return outputs["estimates"]
  if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], dict):
    return outputs[0]["estimates"]           # (outputs, new_state) of a stateful apply
  return outputs


def _is_variables(tree) -> bool:
  return isinstance(tree, dict) and "params" in tree and all(
      isinstance(v, dict) for v in tree.values())


# ------------------------------------------------------------------------------ configs

def load_config_file(config_file: str, config_arg: str = ""):
  """`get_config(config_arg)` of `configs/<file>.py` (a path relative to the repository)."""
  stem = os.path.splitext(os.path.basename(config_file))[0]
  if not os.path.exists(os.path.join(CONFIGS_DIR, f"{stem}.py")):
    raise FileNotFoundError(f"config file {config_file} is not in {CONFIGS_DIR}; the model "
                            "was exported from another version of the toolkit")
  try:
    return importlib.import_module(f"spatialsep_jax.configs.{stem}").get_config(config_arg)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"cannot rebuild the config: configs/{stem}.py get_config({config_arg!r}) "
                     f"says: {e}; the model was exported from another version of the "
                     "toolkit") from None


def overlay(config, saved: dict, where: str = "config"):
  """Sets `config`'s fields to the `saved` values (JSON lists back to tuples); fields absent
  from `saved` keep their defaults, saved fields the config lacks are added."""
  import ml_collections
  for key, value in saved.items():
    if isinstance(value, dict):
      if key in config and isinstance(config[key], ml_collections.ConfigDict):
        overlay(config[key], value, f"{where}.{key}")
      else:
        config[key] = ml_collections.ConfigDict(_tuples(value))
      continue
    value = _tuples(value)
    try:
      config[key] = value
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}.{key}={value!r} does not fit this toolkit's config ({e}); "
                       "the model was exported from another version") from None
  return config


def _tuples(value):
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _config_from_record(record: dict, where: str):
  missing = [k for k in ("config",) if k not in record]
  if missing:
    raise ValueError(f"{where} has no {missing[0]!r} entry; re-export the model")
  if record.get("config_file"):
    config = load_config_file(record["config_file"], record.get("config_arg", ""))
  else:  # a workdir's config.json (name + full config): start from the base and lay all on
    from spatialsep_jax.configs import base
    name = record.get("name") or record["config"].get("name", "")
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    config = (load_config_file(path, "") if name and os.path.exists(path)
              else base.get_base_config(""))
  return overlay(config, record["config"])


# ------------------------------------------------------------------------------ params

def _float_tree(tree, dtype=np.float32):
  import jax
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating)
      else np.asarray(a), tree)


def _check_params(params, abstract, where: str) -> None:
  import jax
  got = {jax.tree_util.keystr(k): v.shape for k, v in
         jax.tree_util.tree_flatten_with_path(params)[0]}
  want = {jax.tree_util.keystr(k): v.shape for k, v in
          jax.tree_util.tree_flatten_with_path(abstract)[0]}
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if tuple(want[k]) != tuple(got[k]))
  if missing or extra or wrong:
    detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra
              else f"{wrong[0]} is {got[wrong[0]]}, the model wants {want[wrong[0]]}")
    raise ValueError(f"the parameters in {where} do not fit the model its config builds "
                     f"({detail}); re-export the model with this version of the toolkit")


def export_pretrained(out_dir: str, config, params, config_file: str, config_arg: str = "",
                      metrics: dict | None = None, model_card: str | None = None) -> str:
  """Writes a pretrained folder in the agreed format (each file atomically); returns it."""
  import flax
  import jax
  from spatialsep_jax import train
  out_dir = inference.check_output_folder(out_dir)
  halves = jax.tree_util.tree_map(
      lambda a: np.asarray(a).astype(np.float16)
      if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a),
      jax.device_get(params))
  io_safety.atomic_write(os.path.join(out_dir, "params.msgpack"),
                         flax.serialization.msgpack_serialize(halves))
  record = {"name": config.name, "config_file": config_file, "config_arg": config_arg,
            "config": json.loads(config.to_json_best_effort()),
            "fingerprint": train.config_fingerprint(config)}
  io_safety.atomic_write_json(os.path.join(out_dir, "config.json"), record)
  io_safety.atomic_write_json(os.path.join(out_dir, "metrics.json"), metrics or {}, default=float)
  io_safety.atomic_write(os.path.join(out_dir, "MODEL_CARD.md"),
                         model_card or f"# {config.name}\n\nExported with spatialsep_jax.\n")
  return out_dir


def pretrained_names() -> list[str]:
  if not os.path.isdir(PRETRAINED_DIR):
    return []
  return sorted(d for d in os.listdir(PRETRAINED_DIR)
                if os.path.exists(os.path.join(PRETRAINED_DIR, d, "config.json")))


def _pretrained_folder(name_or_path: str) -> str:
  if os.path.isdir(name_or_path):
    return name_or_path
  folder = os.path.join(PRETRAINED_DIR, name_or_path)
  if os.path.isdir(folder):
    return folder
  names = pretrained_names()
  raise FileNotFoundError(
      f"no pretrained model {name_or_path!r}: neither a folder nor in {PRETRAINED_DIR}; "
      + (f"use one of {', '.join(names)}" if names else "none is installed there yet")
      + " or give the path of an exported folder")


# ------------------------------------------------------------------------------ separator

class Separator:
  """A trained separator: `separate(array_or_path)` -> [S, T] numpy."""

  def __init__(self, config, params, *, source: str = "", batch_size: int = 4):
    import jax
    import jax.numpy as jnp
    from spatialsep_jax import models
    self.config = config
    self.source = source or config.name
    self.sample_rate = int(config.data.sample_rate)
    self.num_sources = int(config.data.num_sources)
    self.input_channels = tuple(config.data.input_channels)
    self.segment = int(round(config.data.segment_seconds * config.data.sample_rate))
    self.batch_size = int(batch_size)
    reference = config.data.get("reference_mic", self.input_channels[0])
    self.reference_channel = (self.input_channels.index(reference)
                              if reference in self.input_channels else 0)
    self.module = models.build(config)
    # `params` may be the params collection or all variables ({"params": ..., "batch_stats":
    # ...}, what evaluation.load_trained returns after the model registry).
    self.variables = dict(params) if _is_variables(params) else {"params": params}
    self.params = self.variables["params"]
    import inspect
    takes_train = "train" in inspect.signature(self.module.__call__).parameters
    kwargs = {"train": False} if takes_train else {}
    module = self.module
    self._apply = jax.jit(lambda v, x: _estimates(module.apply(
        v, x.astype(jnp.float32), **kwargs)).astype(jnp.float32))

  # ---------------------------------------------------------------- constructors

  @classmethod
  def from_pretrained(cls, name_or_path: str, *, compute_dtype: str | None = "float32",
                      batch_size: int = 4) -> "Separator":
    """A model from `pretrained/<name>/` (or any exported folder). `compute_dtype` (default
    float32, the fast and exact choice on CPUs) replaces the training compute dtype; None
    keeps it (e.g. bfloat16 on an accelerator)."""
    import flax
    folder = _pretrained_folder(name_or_path)
    record = io_safety.read_json(os.path.join(folder, "config.json"), "pretrained config")
    config = _config_from_record(record, os.path.join(folder, "config.json"))
    from spatialsep_jax import train
    if record.get("fingerprint") and train.config_fingerprint(config) != record["fingerprint"]:
      LOG.info("%s: the rebuilt config's fingerprint differs from the exported one (the "
                  "configs gained fields since); the parameters are checked against the model",
                  folder)
    path = os.path.join(folder, "params.msgpack")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{folder} has no params.msgpack; re-export the model")
    with open(path, "rb") as f:
      data = f.read()
    try:
      params = flax.serialization.msgpack_restore(data)
    except Exception as e:  # noqa: BLE001  (msgpack raises several kinds)
      raise ValueError(f"{path} is not a readable msgpack file ({type(e).__name__}: {e}); it is "
                       "damaged or a Git LFS pointer: fetch or re-export it") from None
    if compute_dtype is not None and "dtype" in config.model:
      config.model.dtype = compute_dtype
    separator = cls(config, _float_tree(params), source=folder, batch_size=batch_size)
    _check_params(separator.params, separator.abstract_params(), path)
    return separator

  @classmethod
  def from_workdir(cls, workdir: str, which: str = "best", config=None, *,
                   compute_dtype: str | None = "float32", batch_size: int = 4) -> "Separator":
    """The `best` (lowest validation loss) or `latest` checkpoint of a training run. The
    config is the run's config.json unless given."""
    import jax
    from spatialsep_jax import evaluation
    if which not in ("best", "latest"):
      raise ValueError(f"which={which!r}; use 'best' or 'latest'")
    if config is None:
      path = os.path.join(workdir, "config.json")
      record = io_safety.read_json(path, "run config")
      config = _config_from_record(record, path)
    _, params, step = evaluation.load_trained(config, workdir, which)
    config = config.copy_and_resolve_references()
    if compute_dtype is not None and "dtype" in config.model:
      config.model.dtype = compute_dtype
    separator = cls(config, _float_tree(jax.device_get(params)),
                    source=f"{workdir} ({which}, step {int(step)})", batch_size=batch_size)
    return separator

  # ---------------------------------------------------------------- separation

  def abstract_params(self):
    import jax
    import jax.numpy as jnp
    mixture = jnp.zeros((1, self.segment, len(self.input_channels)), jnp.float32)
    return jax.eval_shape(lambda: self.module.init(jax.random.key(0), mixture))["params"]

  def _separate_chunks(self, chunks: np.ndarray) -> np.ndarray:
    """[B, segment, C] -> [B, S', segment]; batches padded to one shape (one compile)."""
    count = len(chunks)
    if count < self.batch_size:
      chunks = np.concatenate([chunks, np.zeros((self.batch_size - count,) + chunks.shape[1:],
                                                chunks.dtype)])
    return np.asarray(self._apply(self.variables, chunks))[:count]

  def _as_input(self, array_or_path, rate):
    if isinstance(array_or_path, (str, os.PathLike)):
      path = os.fspath(array_or_path)
      audio, file_rate, _ = inference.read_audio(path)
      if rate is not None and int(rate) != file_rate:
        raise ValueError(f"rate={rate} but {path} is at {file_rate} Hz; leave rate out for files")
      return audio, file_rate, path
    audio = np.asarray(array_or_path)
    if not np.issubdtype(audio.dtype, np.number):
      raise ValueError(f"cannot separate an array of {audio.dtype}; give float samples [T] or "
                       "[T, C]")
    if np.issubdtype(audio.dtype, np.integer):
      audio = audio / float(np.iinfo(audio.dtype).max)
    audio = audio.astype(np.float32)
    if audio.ndim == 1:
      audio = audio[:, None]
    elif audio.ndim == 2 and audio.shape[0] <= 6 < audio.shape[1]:
      audio = audio.T                                      # [C, T] given
    elif audio.ndim != 2:
      raise ValueError(f"audio of shape {audio.shape}; give [T], [T, C] or [C, T] samples")
    return audio, int(rate) if rate else self.sample_rate, "the input array"

  def separate(self, array_or_path, rate: int | None = None) -> np.ndarray:
    """[S, T] float32 streams of a recording (a path, or samples at `rate`, default the
    model's rate), at the input's rate, length and level."""
    audio, rate, where = self._as_input(array_or_path, rate)
    return self._separate(audio, rate, where)

  def _separate(self, audio, rate, where):
    inference.check_finite(audio, where)
    audio = inference.select_channels(audio, self.input_channels, where)
    return inference.separate_recording(
        self._separate_chunks, audio, rate, self.sample_rate, self.segment, self.num_sources,
        self.reference_channel, self.batch_size, where)

  def separate_file(self, path: str, out_dir: str | None = None) -> list[str]:
    """Separates `path` into `<out_dir>/<stem>_talker<k>.wav` (default: beside the input);
    the folder is checked before any work; each file is written atomically in the input's
    sample format."""
    audio, rate, subtype = inference.read_audio(path)
    out_dir = inference.check_output_folder(out_dir or os.path.dirname(os.path.abspath(path)))
    streams = self._separate(audio, rate, path)
    stem = os.path.splitext(os.path.basename(path))[0]
    return write_streams(streams, rate, out_dir, stem, subtype)


def write_streams(streams: np.ndarray, rate: int, out_dir: str, stem: str,
                  subtype: str = "FLOAT") -> list[str]:
  """Writes [S, T] streams as `<stem>_talker<k>.wav` (atomically). PCM output that would clip
  is scaled down, all streams together, with a warning; float output keeps its level."""
  import soundfile
  if subtype not in _FLOAT_SUBTYPES + _PCM_SUBTYPES:
    subtype = "FLOAT"
  peak = float(np.max(np.abs(streams))) if streams.size else 0.0
  if subtype in _PCM_SUBTYPES and peak > 1.0:
    LOG.warning("the separated streams of %s peak at %.2f, above full scale for %s: scaled "
                "down together by %.1f dB", stem, peak, subtype, 20 * np.log10(peak / 0.999))
    streams = streams * (0.999 / peak)
  paths = []
  for s, stream in enumerate(streams):
    target = os.path.join(out_dir, f"{stem}_talker{s + 1}.wav")
    # Encoded in memory, then written atomically: libsndfile reports a full disk only as
    # "System error.", a plain write names it (ENOSPC / EFBIG) and leaves no partial file.
    encoded = io.BytesIO()
    soundfile.write(encoded, stream, rate, subtype=subtype, format="WAV")
    io_safety.atomic_write(target, encoded.getvalue())
    paths.append(target)
  return paths
