"""The generic trainer: train state, one jitted data-parallel step, validation, checkpoints.

`train_and_evaluate(config, workdir)` is the main job behind `launch/train.py`.
The step is a single `jax.jit` over a device mesh (batch sharded on ``data``,
parameters replicated), so it runs unchanged on 1 CPU, N GPUs and several hosts.
"""

import collections
import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from spatialsep_jax import checkpoint as checkpoint_lib
from spatialsep_jax import config_checks
from spatialsep_jax import losses
from spatialsep_jax import metrics as metrics_lib
from spatialsep_jax import models
from spatialsep_jax import sharding
from spatialsep_jax import summary

# Keys of the batch that enter the jitted step; metadata stays on the host.
STEP_KEYS = ("mixture", "sources", "mixture_reference")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteError(RuntimeError):
  pass


# optax.tree.norm replaces the deprecated optax.global_norm (kept for older optax on hosts).
_tree_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """StepLR as in the study: multiply by ``decay_factor`` every ``decay_every_steps``.

  The study decays every 50 epochs; with a step budget instead of epochs the
  default (``decay_every_steps=0``) decays at one and two thirds of the run.
  """
  every = config.optim.decay_every_steps or max(1, config.train.num_steps // 3)
  return optax.exponential_decay(
      config.optim.learning_rate, transition_steps=every,
      decay_rate=config.optim.decay_factor, staircase=True)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with global-norm clipping; non-finite updates are skipped and counted."""
  inner = optax.chain(
      optax.clip_by_global_norm(config.optim.clip_norm),
      optax.adam(learning_rate_schedule(config)))
  # The host stops the run after `max_consecutive_nonfinite`; optax's own limit is set
  # out of reach so a bad update is never let through.
  return optax.apply_if_finite(inner, max_consecutive_errors=2**30)


def example_input_shape(config) -> tuple[int, int, int]:
  samples = int(round(config.data.segment_seconds * config.data.sample_rate))
  return (1, samples, len(config.data.input_channels))


def init_state(config, model, optimizer, rng) -> TrainState:
  mixture = jnp.zeros(example_input_shape(config), jnp.float32)
  params = model.init(rng, mixture)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def nonfinite_count(opt_state) -> jax.Array:
  """Consecutive non-finite updates so far (from optax.apply_if_finite's state)."""
  return opt_state.notfinite_count


def make_loss_fn(config, model) -> Callable:
  num_sources = config.data.num_sources

  def loss_fn(params, batch):
    """(mean loss, aux with per-example loss, perm and the estimates [B, S, T] float32)."""
    estimates = model.apply({"params": params}, batch["mixture"].astype(jnp.float32))
    estimates = estimates[:, :num_sources].astype(jnp.float32)
    loss, aux = losses.separation_loss(
        estimates, batch["sources"].astype(jnp.float32), name=config.loss.name,
        clamp_db=config.loss.clamp_db)
    return loss, {**aux, "estimates": estimates}

  return loss_fn


def make_train_step(config, model, optimizer) -> Callable:
  loss_fn = make_loss_fn(config, model)

  def train_step(state: TrainState, batch: dict):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {
        "loss": loss,
        "grad_norm": _tree_norm(grads),
        "nonfinite_in_a_row": nonfinite_count(opt_state),
        "learning_rate": learning_rate_schedule(config)(state.step),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), step_metrics

  return train_step


def make_eval_step(config, model) -> Callable:
  """Per-example validation figures: loss, SI-SDR of the estimates and of the mixture."""
  loss_fn = make_loss_fn(config, model)

  def eval_step(params, batch):
    _, aux = loss_fn(params, batch)
    sources = batch["sources"].astype(jnp.float32)
    aligned = losses.reorder(aux["estimates"], aux["perm"])
    est_sisdr = metrics_lib.sisdr(aligned, sources).mean(axis=-1)
    mix = jnp.broadcast_to(batch["mixture_reference"][:, None, :].astype(jnp.float32), sources.shape)
    mix_sisdr = metrics_lib.sisdr(mix, sources).mean(axis=-1)
    return {"loss": aux["per_example"], "sisdr": est_sisdr, "sisdri": est_sisdr - mix_sisdr}

  return eval_step


@dataclasses.dataclass
class Programs:
  """The jitted functions of one run and the shardings they use."""
  mesh: Any
  model: Any
  optimizer: Any
  train_step: Callable
  eval_step: Callable
  init: Callable


def build_programs(config, mesh=None) -> Programs:
  mesh = mesh or sharding.make_mesh()
  model = models.build(config)
  optimizer = make_optimizer(config)
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  train_step = jax.jit(make_train_step(config, model, optimizer),
                       in_shardings=(replicated, batched), out_shardings=(replicated, replicated),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(config, model), in_shardings=(replicated, batched),
                      out_shardings=replicated)  # small per-example vectors, readable on every process
  init = jax.jit(lambda rng: init_state(config, model, optimizer, rng), out_shardings=replicated)
  return Programs(mesh, model, optimizer, train_step, eval_step, init)


def step_inputs(batch: dict, mesh) -> dict:
  return sharding.shard_batch({k: batch[k] for k in STEP_KEYS if k in batch}, mesh)


def device_batches(batches, mesh, depth: int):
  """Host batches -> sharded device batches, `depth` batches ahead, so the host-to-device
  copy of the next batches overlaps the running step (resuming does not depend on it: the
  loader restarts at the step's batch number)."""
  queue = collections.deque()
  for batch in batches:
    queue.append(step_inputs(batch, mesh))
    if len(queue) > depth:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def validate(programs: Programs, params, batches) -> dict:
  """Mean loss, SI-SDR and SI-SDRi over the given validation batches."""
  rows = {"loss": [], "sisdr": [], "sisdri": []}
  for batch in batches:
    out = programs.eval_step(params, step_inputs(batch, programs.mesh))
    for key in rows:
      rows[key].append(np.asarray(jax.device_get(out[key])))
  if not rows["loss"]:
    raise ValueError("the validation split gave no complete batch; render more val examples "
                     "(config.data.num_examples.val) or lower config.train.batch_size")
  return {f"val_{k}": float(np.mean(np.concatenate(v))) for k, v in rows.items()}


def _full_batches(loader, batch_size: int, limit: int):
  taken = []
  for batch in loader:
    if len(batch["mixture"]) != batch_size:
      break
    taken.append(batch)
    if len(taken) >= limit:
      break
  return taken


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag so the loop can checkpoint before exiting."""

  def __init__(self):
    self.received = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    self.received = signal.Signals(signum).name

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def config_fingerprint(config) -> str:
  """Hash of what determines the trained function (not logging cadence or step budget)."""
  import hashlib
  relevant = {k: config[k].to_dict() for k in ("data", "model", "loss", "optim")}
  for where_or_how in ("shards_dir", "cache_dir", "loader", "prefetch", "loader_workers",
                       "host_audio_dtype", "device_prefetch"):
    relevant["data"].pop(where_or_how, None)
  for how in ("norm_impl", "remat", "remat_blocks"):  # the same function, computed differently
    relevant["model"].pop(how, None)
  if not relevant["model"].get("scan_blocks"):  # stacked parameters only when scanned
    relevant["model"].pop("scan_blocks", None)
  relevant["seed"] = config.seed
  relevant["batch_size"] = config.train.batch_size
  return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       shards_dir: str | None = None, progress: bool = True) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Returns the final metrics dict (last train loss, best validation figures, steps).
  """
  from data_pipeline import dataset, loader as loader_lib

  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh()
  config_checks.check_config(config, num_devices=mesh.devices.size)
  shards_dir = shards_dir or dataset.ensure_dataset(config, progress=progress)
  loader_lib.check_manifest(config, dataset.read_manifest(shards_dir))

  os.makedirs(workdir, exist_ok=True)
  fingerprint = config_fingerprint(config)
  _check_workdir_config(workdir, config, fingerprint)

  programs = build_programs(config, mesh)
  abstract = jax.eval_shape(programs.init, jax.random.key(config.seed))
  ckpt = checkpoint_lib.Checkpointer(workdir, keep_best=config.train.keep_best)
  extra = {"config_fingerprint": fingerprint}
  best = {"val_loss": float("inf")}
  evals_without_improvement = 0
  if ckpt.latest_step() is not None:
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=sharding.replicated(mesh)),
                          abstract)
    state, meta = ckpt.restore_latest(target)
    best = meta.get("best", best)
    evals_without_improvement = meta.get("evals_without_improvement", 0)
    logging.info("resuming from step %d in %s", int(state.step), workdir)
    print(f"Resuming from step {int(state.step)} (checkpoint in {workdir}/checkpoints/latest)")
  else:
    state = programs.init(jax.random.key(config.seed))
  start_step = int(state.step)

  batch_size = config.train.batch_size
  train_loader = loader_lib.make_loader(config, shards_dir, "train", train=True,
                                        batch_size=batch_size, start_batch=start_step)
  val_batches = _full_batches(
      loader_lib.make_loader(config, shards_dir, "val", train=False, batch_size=batch_size),
      batch_size // jax.process_count(), config.train.eval_batches)

  writer = summary.MetricWriter(os.path.join(workdir, "logs"))
  stopper = _StopSignal()
  last_metrics, stopped_by = {}, None
  bar = tqdm(total=config.train.num_steps, initial=start_step, disable=not progress
             or jax.process_index() != 0, desc=config.name, unit="step", dynamic_ncols=True)
  tick_time, tick_step = time.perf_counter(), start_step
  step = start_step
  try:
    train_iter = device_batches(train_loader, mesh, int(config.data.get("device_prefetch", 2)))
    while step < config.train.num_steps:
      state, step_metrics = programs.train_step(state, next(train_iter))
      step += 1
      bar.update(1)
      if step % config.train.log_every == 0 or step == config.train.num_steps:
        host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        now = time.perf_counter()
        rate = (step - tick_step) / max(now - tick_time, 1e-9)
        tick_time, tick_step = now, step
        host.update(steps_per_s=rate, samples_per_s=rate * batch_size)
        writer.write_scalars(step, host)
        bar.set_postfix(loss=f"{host['loss']:.2f}", samples_s=f"{host['samples_per_s']:.1f}")
        last_metrics = host
        if host["nonfinite_in_a_row"] >= config.train.max_consecutive_nonfinite:
          raise NonFiniteError(
              f"{int(host['nonfinite_in_a_row'])} non-finite losses/gradients in a row at step "
              f"{step}; the last good checkpoint is intact in {workdir}/checkpoints; lower "
              "config.optim.learning_rate or check the data")
      if step % config.train.eval_every == 0 or step == config.train.num_steps:
        val = validate(programs, state.params, val_batches)
        writer.write_scalars(step, val)
        last_metrics.update(val)
        if val["val_loss"] < best["val_loss"]:
          best, evals_without_improvement = {**val, "step": step}, 0
        else:
          evals_without_improvement += 1
        ckpt.save_best(step, state, val["val_loss"], extra)
        bar.write(f"step {step}: val loss {val['val_loss']:.2f}  SI-SDRi {val['val_sisdri']:.2f} dB")
        patience = config.train.early_stopping_patience
        if patience and evals_without_improvement >= patience:
          stopped_by = f"early stopping after {patience} evaluations without improvement"
      if (step % config.train.checkpoint_every == 0 or step == config.train.num_steps
          or stopper.received or stopped_by):
        ckpt.save_latest(step, state, {"next_batch": step},
                         {**extra, "best": best,
                          "evals_without_improvement": evals_without_improvement},
                         force=True)
      if stopper.received:
        stopped_by = f"{stopper.received}: checkpoint saved at step {step}, rerun to resume"
      if stopped_by:
        break
  finally:
    bar.close()
    stopper.restore()
    ckpt.wait()
    ckpt.close()
    writer.close()
  if stopped_by:
    print(f"Stopped: {stopped_by}")
  result = {"step": step, "best": best, "last": last_metrics, "stopped_by": stopped_by,
            "interrupted": bool(stopper.received)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "train_summary.json"), "w") as f:
      json.dump(result, f, indent=1, default=float)
  return result


def _check_workdir_config(workdir: str, config, fingerprint: str) -> None:
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("fingerprint") != fingerprint:
      raise ValueError(
          f"{workdir} holds a run of a different configuration ({saved.get('name')}); "
          "use another --workdir or delete that one")
    return
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump({"name": config.name, "fingerprint": fingerprint,
                 "config": json.loads(config.to_json_best_effort())}, f, indent=1)
