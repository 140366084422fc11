"""Frozen teachers for CNUNet stage 1: any function of the clean waveform -> [frames, D].

  config.model.teacher = "speech_encoder_substitute"    # the one shipped here (below)
  config.model.teacher = "my_package.my_module:embed"   # any fn(wave [B, L]) -> [B, N', D],
                                                        # with config.model.teacher_dim = D

The seed's teacher is WavLM Large (a uniform sum of its layers, 1024-d), which cannot be
downloaded here. **speech_encoder_substitute** is NOT WavLM: it is a small non-causal
convolutional encoder trained in this project, from clean speech alone, by masked-frame
reconstruction (30 % of the log-spectrum frames of the clean target, in spans of 4, are
zeroed; the encoder and a linear head predict them; loss on the masked frames only). Its
embedding is the encoder output, 20-ms frames (hop 320 at 16 kHz), `dim` channels. Train it
with `launch/cnunet_teacher.py` (writes an .npz of its parameters and settings); the model
config names the file in `config.model.teacher_path`. The teacher's parameters are constants
of the stage-1 model (closed over, not in "params"), so they stay frozen.
"""

import dataclasses
import importlib
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spatialsep_jax import io_safety

SUBSTITUTE = "speech_encoder_substitute"
DEFAULT_PATH = os.path.join("pretrained", "teachers", f"{SUBSTITUTE}.npz")


@dataclasses.dataclass(frozen=True)
class SubstituteSettings:
  n_fft: int = 512
  hop: int = 320
  dim: int = 128
  layers: int = 4
  kernel: int = 5
  mask_fraction: float = 0.3
  mask_span: int = 4


def log_spectrum(wave: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """[B, L] -> [B, N, n_fft // 2 + 1] log(|STFT|^2 + 1e-6), Hann window, centred frames."""
  padded = jnp.pad(wave, ((0, 0), (n_fft // 2, n_fft // 2)))
  frames = 1 + (padded.shape[-1] - n_fft) // hop
  index = hop * np.arange(frames)[:, None] + np.arange(n_fft)[None, :]
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
  spectrum = jnp.fft.rfft(padded[:, index] * window, axis=-1)
  return jnp.log(jnp.abs(spectrum) ** 2 + 1e-6)


class SpeechEncoder(nn.Module):
  """Non-causal dilated conv encoder over per-utterance normalised log spectra:
  [B, N, F] -> [B, N, dim] (symmetric kernels: it sees the whole utterance, as WavLM does)."""
  settings: SubstituteSettings

  @nn.compact
  def __call__(self, features):
    s = self.settings
    x = nn.Dense(s.dim, name="input")(features)
    for i in range(s.layers):
      y = nn.Conv(s.dim, (s.kernel,), kernel_dilation=(2**i,), padding="SAME", name=f"conv{i}")(x)
      x = x + nn.gelu(nn.LayerNorm(name=f"norm{i}")(y))
    return x


class _Pretrainer(nn.Module):
  settings: SubstituteSettings

  @nn.compact
  def __call__(self, features):
    hidden = SpeechEncoder(self.settings, name="encoder")(features)
    return nn.Dense(features.shape[-1], name="head")(hidden)


def _normalise(features):
  mean = jnp.mean(features, axis=(1, 2), keepdims=True)
  std = jnp.std(features, axis=(1, 2), keepdims=True)
  return (features - mean) / (std + 1e-5)


def substitute_function(params, settings: SubstituteSettings):
  """The frozen teacher: fn(wave [B, L]) -> [B, N', dim]."""
  encoder = SpeechEncoder(settings)
  constants = jax.tree.map(jnp.asarray, params)

  def embed(wave):
    features = _normalise(log_spectrum(wave.astype(jnp.float32), settings.n_fft, settings.hop))
    return encoder.apply({"params": constants}, features)

  return embed


def save_substitute(path: str, params, settings: SubstituteSettings, info: dict) -> None:
  flat = {"/".join(k.key for k in key): np.asarray(v)
          for key, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  with io_safety.atomic_path(path, suffix=".npz") as temporary:  # a kill leaves no torn file
    np.savez(temporary, **flat, __settings__=json.dumps(dataclasses.asdict(settings)),
             __info__=json.dumps(info))


def load_substitute(path: str):
  """(params, settings, info) of a file written by `save_substitute`."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"no teacher file {path}; train the substitute teacher first: python "
        f"launch/cnunet_teacher.py --config=configs/cnunet_tb_stage1.py --out={path}")
  data = np.load(path)
  settings = SubstituteSettings(**json.loads(str(data["__settings__"])))
  params: dict = {}
  for key in data.files:
    if key.startswith("__"):
      continue
    node = params
    *parents, leaf = key.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = data[key]
  return params, settings, json.loads(str(data["__info__"]))


def load(config):
  """(fn, dim) of `config.model.teacher`."""
  name = config.model.teacher
  if name == SUBSTITUTE:
    path = config.model.get("teacher_path", "") or DEFAULT_PATH
    params, settings, _ = load_substitute(path)
    return substitute_function(params, settings), settings.dim
  module_name, _, function = name.partition(":")
  if not function:
    raise ValueError(f"config.model.teacher={name!r} is neither {SUBSTITUTE!r} nor "
                     "'package.module:function'")
  dim = int(config.model.get("teacher_dim", 0))
  if dim < 1:
    raise ValueError(f"config.model.teacher={name!r} needs config.model.teacher_dim (its D)")
  return getattr(importlib.import_module(module_name), function), dim


def _span_mask(rng: np.random.Generator, batch: int, frames: int, fraction: float, span: int):
  """[B, N] bool: spans of `span` frames starting at random frames, ~`fraction` masked."""
  starts = rng.random((batch, frames)) < fraction / span
  mask = np.zeros((batch, frames), bool)
  for offset in range(span):
    mask[:, offset:] |= starts[:, :frames - offset]
  return mask


def train_substitute(config, shards_dir: str, out_path: str, *, steps: int = 2000,
                     batch_size: int = 16, learning_rate: float = 1e-3,
                     settings: SubstituteSettings = SubstituteSettings(), log_every: int = 100):
  """Masked-frame pretraining on the clean target (`sources`, talker 0) of the training split:
  speech alone, no noise and no labels. Writes `out_path`; returns the loss history."""
  from data_pipeline import loader as loader_lib
  model = _Pretrainer(settings)
  batches = loader_lib.make_loader(config, shards_dir, "train", train=True,
                                   batch_size=batch_size, process_index=0, process_count=1)
  first = next(iter(batches))
  wave = jnp.asarray(first["sources"][:, 0], jnp.float32)
  features = _normalise(log_spectrum(wave, settings.n_fft, settings.hop))
  params = model.init(jax.random.key(config.seed), features)["params"]
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, wave, mask):
    features = _normalise(log_spectrum(wave, settings.n_fft, settings.hop))

    def loss_fn(p):
      predicted = model.apply({"params": p}, jnp.where(mask[..., None], 0.0, features))
      error = jnp.mean(jnp.square(predicted - features), axis=-1)
      return jnp.sum(error * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(config.seed)
  history, start = [], time.time()
  iterator = iter(batches)
  for index in range(steps):
    batch = next(iterator)
    wave = jnp.asarray(batch["sources"][:, 0], jnp.float32)
    mask = _span_mask(rng, wave.shape[0], features.shape[1], settings.mask_fraction,
                      settings.mask_span)
    params, opt_state, loss = step(params, opt_state, wave, jnp.asarray(mask))
    if index % log_every == 0 or index == steps - 1:
      history.append((index, float(loss)))
      print(f"[teacher] step {index}: masked-frame loss {float(loss):.4f}", flush=True)
  encoder_params = params["encoder"]
  save_substitute(out_path, encoder_params, settings,
                  {"steps": steps, "batch_size": batch_size, "history": history,
                   "seconds": time.time() - start, "objective": "masked log-spectrum frames",
                   "data": f"clean targets (sources) of the train split of {shards_dir}",
                   "not": "WavLM: a substitute trained here from speech alone"})
  return history


__all__ = ["DEFAULT_PATH", "SUBSTITUTE", "SpeechEncoder", "SubstituteSettings", "load",
           "load_substitute", "log_spectrum", "save_substitute", "substitute_function",
           "train_substitute"]
