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
from spatialsep_jax import io_safety
from spatialsep_jax import loss_terms
from spatialsep_jax import models
from spatialsep_jax import sharding
from spatialsep_jax import summary
from spatialsep_jax import tasks

# The batch keys every step sees; the loss terms and the evaluation task add theirs.
BASE_STEP_KEYS = ("mixture",)


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue: the step, parameters, mutable model collections
  (batch statistics; {} for models without), the optimiser state and the run's base PRNG
  key (each step uses `fold_in(rng, step)`, so resuming at step k replays step k's key)."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array


class NonFiniteError(RuntimeError):
  pass


# optax.tree.norm replaces the deprecated optax.global_norm (kept for older optax on hosts).
_tree_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def resolved_schedule(config: ml_collections.ConfigDict) -> dict:
  """The learning-rate schedule as numbers: part of a run's identity, saved with every
  checkpoint. `optim.decay_every_steps=0` derives the decay interval from `train.num_steps`
  (one and two thirds of the run); `train.schedule_steps` (when > 0) replaces num_steps in
  that rule, so a run extended later keeps the boundaries it started with."""
  horizon = int(config.train.get("schedule_steps", 0)) or int(config.train.num_steps)
  every = int(config.optim.decay_every_steps) or max(1, horizon // 3)
  return {"learning_rate": float(config.optim.learning_rate), "decay_every_steps": every,
          "decay_factor": float(config.optim.decay_factor)}


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """StepLR as in the study: multiply by ``decay_factor`` every ``decay_every_steps``
  (`resolved_schedule`)."""
  schedule = resolved_schedule(config)
  return optax.exponential_decay(
      schedule["learning_rate"], transition_steps=schedule["decay_every_steps"],
      decay_rate=schedule["decay_factor"], staircase=True)


OPTIMIZERS = ("adam", "adamw")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (or AdamW with `optim.weight_decay`, decoupled as in torch.optim.AdamW) with
  global-norm clipping; non-finite updates are skipped and counted. `optim.flatten` runs it
  on all parameters concatenated into one vector (optax.flatten; the checkpointed optimizer
  state then holds vectors, so a run cannot switch it on resume)."""
  name = config.optim.get("name", "adam")
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} is not one of {OPTIMIZERS}; set --config.optim.name")
  schedule = learning_rate_schedule(config)
  if name == "adamw":
    base = optax.adamw(schedule, weight_decay=float(config.optim.get("weight_decay", 0.01)))
  else:
    base = optax.adam(schedule)
  inner = optax.chain(optax.clip_by_global_norm(config.optim.clip_norm), base)
  # The host stops the run after `max_consecutive_nonfinite`; optax's own limit is set
  # out of reach so a bad update is never let through.
  guarded = optax.apply_if_finite(inner, max_consecutive_errors=2**30)
  if config.optim.get("flatten", False):
    # One vector instead of a tree: the same update elementwise, but a model of ~1,300 small
    # tensors (CNUNet) lowers its optimizer to ~52 ops per tensor otherwise (66k of the
    # real SB step's 103k StableHLO ops), and XLA's compile time follows the op count.
    return optax.flatten(guarded)
  return guarded


def example_input_shape(config) -> tuple[int, int, int]:
  samples = int(round(config.data.segment_seconds * config.data.sample_rate))
  return (1, samples, len(config.data.input_channels))


def synthetic_batch_spec(config, programs, batch_size: int) -> dict:
  """{key: jax.ShapeDtypeStruct} of the batch the trainer's loader gives `programs.train_step`:
  the audio keys the step reads in the loader's host dtype (`data_pipeline.loader.audio_shapes`)
  and, for keys no rendered audio holds, the shape of the model output a loss term compares
  them with (its `outputs_key`: CNUNet stage 2's stored latents, float32 as their join yields),
  by jax.eval_shape (nothing compiles). Synthetic batches of it lower the trainer's program.
  Raises ValueError for a key neither provides."""
  import inspect
  from data_pipeline import loader as loader_lib
  samples = example_input_shape(config)[1]
  audio = loader_lib.audio_shapes(samples, config.data.num_sources,
                                  len(config.data.input_channels),
                                  len(config.data.get("target_mics", ()) or ()) or 1)
  host_dtype = np.dtype(config.data.get("host_audio_dtype", "float32"))
  spec = {key: jax.ShapeDtypeStruct((batch_size,) + audio[key], host_dtype)
          for key in programs.step_keys if key in audio}
  missing = [key for key in programs.step_keys if key not in spec]
  if not missing:
    return spec
  mirrored = {}
  for term in programs.terms:
    parameters = inspect.signature(term.spec.fn).parameters
    if "outputs_key" in parameters:
      for key in term.batch_keys:
        mirrored[key] = term.settings.get("outputs_key", parameters["outputs_key"].default)
  unknown = [key for key in missing if key not in mirrored]
  if unknown:
    raise ValueError(f"the step reads {unknown}, which neither rendered audio nor a model output "
                     "provides: feed it real batches (launch/benchmark.py --e2e_steps)")
  mixture = jax.ShapeDtypeStruct(example_input_shape(config), jnp.float32)

  def forward(mixture):
    return programs.model.apply(programs.model.init(jax.random.key(0), mixture), mixture)[0]

  outputs = jax.eval_shape(forward, mixture)
  spec.update({key: jax.ShapeDtypeStruct((batch_size,) + outputs[mirrored[key]].shape[1:],
                                         np.float32) for key in missing})
  return spec


def init_state(config, model: models.Model, optimizer, rng) -> TrainState:
  init_rng, run_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros(example_input_shape(config), jnp.float32))
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                    opt_state=optimizer.init(params), rng=jax.random.key_data(run_rng))


def nonfinite_count(opt_state) -> jax.Array:
  """Consecutive non-finite updates so far (from optax.apply_if_finite's state)."""
  return opt_state.notfinite_count


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def make_loss_fn(config, model: models.Model, terms) -> Callable:

  def loss_fn(params, model_state, batch, rng, train):
    """(mean loss, aux): aux has the per-example loss [B], the terms' metrics, the outputs,
    the new model state and the permutation a PIT term chose (or None)."""
    model_rng, loss_rng = jax.random.split(rng)
    outputs, new_state = model.apply({"params": params, **model_state},
                                     batch["mixture"].astype(jnp.float32), train=train,
                                     rng=model_rng, references=model.references(batch))
    per_example, term_metrics, perm = loss_terms.total_loss(terms, outputs, batch, loss_rng)
    aux = {"per_example": per_example, "metrics": term_metrics, "outputs": outputs,
           "model_state": new_state, "perm": perm}
    return jnp.mean(per_example), aux

  return loss_fn


def make_train_step(config, model, optimizer, terms) -> Callable:
  loss_fn = make_loss_fn(config, model, terms)

  def train_step(state: TrainState, batch: dict):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch, step_key(state), True)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {
        "loss": loss,
        "grad_norm": _tree_norm(grads),
        "nonfinite_in_a_row": nonfinite_count(opt_state),
        "learning_rate": learning_rate_schedule(config)(state.step),
        **{k: jnp.mean(v) for k, v in aux["metrics"].items()},
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=aux["model_state"])
    return new_state, step_metrics

  return train_step


def make_eval_step(config, model, terms) -> Callable:
  """Per-example validation figures: the loss and the task's scores (`tasks.py`)."""
  loss_fn = make_loss_fn(config, model, terms)
  task = tasks.get(config.eval.task)

  def eval_step(params, model_state, batch):
    _, aux = loss_fn(params, model_state, batch, jax.random.key(0), False)
    return {"loss": aux["per_example"], **task.score_jax(aux["outputs"], batch, config)}

  return eval_step


@dataclasses.dataclass
class Programs:
  """The jitted functions of one run, the shardings they use and the batch keys they read."""
  mesh: Any
  model: models.Model
  optimizer: Any
  terms: list
  step_keys: tuple
  train_step: Callable
  eval_step: Callable
  init: Callable

  def inputs(self, batch: dict) -> dict:
    return step_inputs(batch, self.mesh, self.step_keys)


def build_programs(config, mesh=None) -> Programs:
  mesh = mesh or sharding.make_mesh()
  model = models.build_model(config)
  optimizer = make_optimizer(config)
  terms = loss_terms.bind(config)
  keys = tuple(dict.fromkeys(BASE_STEP_KEYS + model.train_inputs
                             + loss_terms.batch_keys(terms)
                             + tasks.get(config.eval.task).batch_keys(config)))
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  train_step = jax.jit(make_train_step(config, model, optimizer, terms),
                       in_shardings=(replicated, batched), out_shardings=(replicated, replicated),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(config, model, terms),
                      in_shardings=(replicated, replicated, batched),
                      out_shardings=replicated)  # small per-example vectors, readable everywhere
  init = jax.jit(lambda rng: init_state(config, model, optimizer, rng), out_shardings=replicated)
  return Programs(mesh, model, optimizer, terms, keys, train_step, eval_step, init)


def step_inputs(batch: dict, mesh, keys=None) -> dict:
  """The batch entries a step reads (`keys`; all array entries when None), sharded."""
  if keys is None:
    keys = [k for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f"the batch has no {missing} (it has {sorted(batch)}); the loss terms or "
                     "evaluation task ask for them: render data that has them or change "
                     "config.loss.terms / config.eval.task")
  return sharding.shard_batch({k: batch[k] for k in keys}, mesh)


def device_batches(batches, mesh, depth: int, keys=None):
  """Host batches -> sharded device batches, `depth` batches ahead, so the host-to-device
  copy of the next batches overlaps the running step (resuming does not depend on it: the
  loader restarts at the step's batch number)."""
  queue = collections.deque()
  for batch in batches:
    queue.append(step_inputs(batch, mesh, keys))
    if len(queue) > depth:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def validate(programs: Programs, state: TrainState, batches) -> dict:
  """Means of the loss and the task's scores over the given validation batches."""
  rows = collections.defaultdict(list)
  for batch in batches:
    out = programs.eval_step(state.params, state.model_state, programs.inputs(batch))
    for key, value in jax.device_get(out).items():
      rows[key].append(np.asarray(value))
  if not rows:
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
  """SIGTERM/SIGINT become a request to checkpoint and stop at a step every process agrees on.

  One process: a Python handler sets a flag. Several processes: SIGTERM is left to JAX's
  preemption service (jax.distributed installs its notifier), and
  `multihost_utils.reached_preemption_sync_point` turns a SIGTERM to any one process into the
  same stopping step on all of them, so they save one checkpoint together; SIGINT stays a
  local flag there (an interactive Ctrl-C reaches every process of a terminal).
  """

  def __init__(self):
    self.received = None
    self.stopped = None
    self._multi = jax.process_count() > 1
    self._previous = {}
    signals = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    self.received = signal.Signals(signum).name

  def requested(self, step: int) -> str | None:
    """The signal's name when this step is where the run stops, else None (call every step)."""
    if self._multi:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.stopped = "SIGTERM (preemption, synchronised across processes)"
    if self.received and not self.stopped:
      self.stopped = self.received
    return self.stopped

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _reconcile_best(ckpt, state: TrainState, best: dict, extra: dict) -> None:
  """Makes best/ agree with the restored latest checkpoint's metadata after a kill: best/
  steps after the restored step (they will be recomputed, identically) are dropped, and a
  best step the metadata names but best/ lacks (killed between the two saves) is re-saved
  from the restored state, which is that step's state."""
  restored_step = int(state.step)
  for step in ckpt.best_steps():
    if step > restored_step:
      ckpt.delete_best(step)
  best_step = best.get("step")
  if best_step == restored_step and best_step not in ckpt.best_steps():
    ckpt.save_best(best_step, state, best["val_loss"], extra)
    ckpt.wait()


def config_fingerprint(config) -> str:
  """Hash of what determines the trained function: data, model, loss, optimiser, seed and
  batch size, less the fields that say where files are or how fast they are computed
  (`dataset.RESULT_NEUTRAL_FIELDS`, the model's registered `speed_only_fields`) and the
  step budget (the schedule's identity is checked on its own, `_check_schedule`)."""
  import hashlib
  from data_pipeline import dataset, loader as loader_lib
  relevant = {k: config[k].to_dict() for k in ("data", "model", "loss")}
  relevant["optim"] = {k: v for k, v in config.optim.to_dict().items()
                       if k != "decay_every_steps"}
  # Added with AdamW: at their defaults they leave the fingerprints of earlier runs unchanged.
  if relevant["optim"].get("name", "adam") == "adam" and not relevant["optim"].get("weight_decay"):
    relevant["optim"].pop("name", None)
    relevant["optim"].pop("weight_decay", None)
  if not relevant["optim"].get("flatten"):   # added later, the same rule
    relevant["optim"].pop("flatten", None)
  for field in dataset.RESULT_NEUTRAL_FIELDS:
    relevant["data"].pop(field, None)
  relevant["data"] = dataset.identity_data(relevant["data"])  # noise fields a config leaves unused
  for field in models.get(config.model.name).speed_only_fields:
    relevant["model"].pop(field, None)
  relevant["seed"] = config.seed
  if loader_lib.training_seed(config) != config.seed:  # added later: earlier fingerprints hold
    relevant["train_seed"] = loader_lib.training_seed(config)
  relevant["batch_size"] = config.train.batch_size
  relevant["format"] = CHECKPOINT_FORMAT
  return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


# 2: TrainState with model_state and rng, losses as terms, the corrected SI-SDR (was 1).
CHECKPOINT_FORMAT = 2


def _check_schedule(saved: dict | None, config, workdir: str) -> None:
  """Resuming must not move the learning-rate boundaries of the run so far."""
  now = resolved_schedule(config)
  if not saved or saved == now:
    return
  if config.optim.decay_every_steps == 0 and saved["learning_rate"] == now["learning_rate"]:
    raise ValueError(
        f"{workdir} was trained with decays every {saved['decay_every_steps']} steps (derived "
        f"from its num_steps); this num_steps would move them to every "
        f"{now['decay_every_steps']}: keep the run's schedule with "
        f"--config.optim.decay_every_steps={saved['decay_every_steps']} or start a new workdir")
  raise ValueError(f"{workdir} was trained with the schedule {saved}, this config gives {now}; "
                   "use the run's optim settings or start a new workdir")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       shards_dir: str | None = None, progress: bool = True) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Returns the final metrics dict (last train loss, best validation figures, steps). Process 0
  holds `<workdir>/.train.lock` for the whole run: a second trainer on the workdir stops with
  one line naming this one (io_safety.WorkdirLock; a lock left by a killed run is stale).
  """
  sharding.maybe_initialize_distributed()
  if jax.process_index() != 0:
    return _train_and_evaluate(config, workdir, shards_dir, progress)
  with io_safety.WorkdirLock(workdir, "train"):
    return _train_and_evaluate(config, workdir, shards_dir, progress)


def _train_and_evaluate(config, workdir, shards_dir, progress) -> dict:
  from data_pipeline import dataset, loader as loader_lib

  mesh = sharding.make_mesh()
  config_checks.check_config(config, num_devices=mesh.devices.size)
  shards_dir = shards_dir or dataset.ensure_dataset(config, progress=progress)
  loader_lib.check_manifest(config, dataset.read_manifest(shards_dir))

  os.makedirs(workdir, exist_ok=True)
  fingerprint = config_fingerprint(config)
  _check_workdir_config(workdir, config, fingerprint)

  programs = build_programs(config, mesh)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep_best=config.train.keep_best)
  extra = {"config_fingerprint": fingerprint, "checkpoint_format": CHECKPOINT_FORMAT,
           "schedule": resolved_schedule(config), "config_name": config.name}
  best = {"val_loss": float("inf")}
  evals_without_improvement = 0
  if ckpt.latest_step() is not None:
    meta = ckpt.latest_meta()
    _check_checkpoint_identity(meta, fingerprint, workdir)
    _check_schedule(meta.get("schedule"), config, workdir)
    state, meta = ckpt.restore_latest(abstract_state(programs, config))
    best = meta.get("best", best)
    _reconcile_best(ckpt, state, best, extra)
    evals_without_improvement = meta.get("evals_without_improvement", 0)
    logging.info("resuming from step %d in %s", int(state.step), workdir)
    print(f"Resuming from step {int(state.step)} (checkpoint in {workdir}/checkpoints/latest)")
  else:
    state = programs.init(jax.random.key(loader_lib.training_seed(config)))
  start_step = int(state.step)

  batch_size = config.train.batch_size
  train_loader = loader_lib.make_loader(config, shards_dir, "train", train=True,
                                        batch_size=batch_size, start_batch=start_step)
  val_batches = _full_batches(
      loader_lib.make_loader(config, shards_dir, "val", train=False, batch_size=batch_size),
      batch_size // jax.process_count(), config.train.eval_batches)

  # Rows after the restored step were written after its checkpoint: dropped, so the log
  # holds every step exactly once (a fresh run starts from 0 and keeps none).
  writer = summary.MetricWriter(os.path.join(workdir, "logs"), resume_step=start_step)
  stopper = _StopSignal()
  last_metrics, stopped_by = {}, None
  bar = tqdm(total=config.train.num_steps, initial=start_step, disable=not progress
             or jax.process_index() != 0, desc=config.name, unit="step", dynamic_ncols=True)
  tick_time, tick_step = time.perf_counter(), start_step
  step = start_step
  try:
    train_iter = device_batches(train_loader, mesh, int(config.data.get("device_prefetch", 2)),
                                programs.step_keys)
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
      evaluated = step % config.train.eval_every == 0 or step == config.train.num_steps
      if evaluated:
        val = validate(programs, state, val_batches)
        writer.write_scalars(step, val)
        last_metrics.update(val)
        if val["val_loss"] < best["val_loss"]:
          best, evals_without_improvement = {**val, "step": step}, 0
        else:
          evals_without_improvement += 1
        bar.write(f"step {step}: " + "  ".join(f"{k[4:]} {v:.2f}" for k, v in val.items()))
        patience = config.train.early_stopping_patience
        if patience and evals_without_improvement >= patience:
          stopped_by = f"early stopping after {patience} evaluations without improvement"
      stop_requested = stopper.requested(step)
      # latest/ before best/: a kill between the two leaves a latest whose metadata names a
      # best step that best/ lacks, which the rerun restores (`_reconcile_best`).
      if (step % config.train.checkpoint_every == 0 or step == config.train.num_steps
          or stop_requested or stopped_by):
        ckpt.save_latest(step, state, {"next_batch": step},
                         {**extra, "best": best,
                          "evals_without_improvement": evals_without_improvement},
                         force=True)
      if evaluated:
        ckpt.save_best(step, state, val["val_loss"], extra)
      if stop_requested:
        stopped_by = f"{stop_requested}: checkpoint saved at step {step}, rerun to resume"
      if stopped_by:
        break
  finally:
    bar.close()
    stopper.restore()
    ckpt.wait()
    ckpt.close()
    writer.close()
  if jax.process_count() > 1:
    # Every process leaves together: one that exits while another is still inside orbax's
    # last save or the coordination service's shutdown aborts the other.
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("train_and_evaluate finished")
  if stopped_by:
    print(f"Stopped: {stopped_by}")
  summary_path = os.path.join(workdir, "train_summary.json")
  # The run's peak over every process that trained it (a resumed or no-step rerun sees only
  # its own allocations).
  peaks = [peak_device_memory_gib()]
  if os.path.exists(summary_path):
    earlier = io_safety.read_json(summary_path, "the run's train_summary.json")
    peaks.append(earlier.get("peak_device_memory_gib"))
  peaks = [p for p in peaks if p is not None]
  result = {"step": step, "best": best, "last": last_metrics, "stopped_by": stopped_by,
            "interrupted": bool(stopper.stopped),
            "peak_device_memory_gib": max(peaks) if peaks else None}
  if jax.process_index() == 0:
    io_safety.atomic_write_json(summary_path, result, indent=1,
                                default=float)
  return result


def peak_device_memory_gib() -> float | None:
  """The largest allocation peak of this process's devices (GiB) so far; None where the backend
  keeps no allocator statistics (CPU). Says what share of a shared accelerator a run needs."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) / 2**30 if peaks else None


def abstract_state(programs: Programs, config):
  """Shapes, dtypes and (replicated) shardings of the run's TrainState."""
  from data_pipeline import loader as loader_lib
  abstract = jax.eval_shape(programs.init, jax.random.key(loader_lib.training_seed(config)))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=sharding.replicated(programs.mesh)), abstract)


def _check_checkpoint_identity(meta: dict, fingerprint: str, workdir: str) -> None:
  """The identity stored inside the checkpoint decides, whether or not config.json exists."""
  saved_format = meta.get("checkpoint_format", 1)
  if saved_format != CHECKPOINT_FORMAT:
    raise ValueError(
        f"{workdir} holds a checkpoint of format {saved_format} (spatialsep-jax before the model "
        f"and loss registries; this version writes format {CHECKPOINT_FORMAT}); it cannot resume "
        "here: train in a new --workdir, or evaluate it with the commit that wrote it")
  if meta.get("config_fingerprint") != fingerprint:
    raise ValueError(
        f"{workdir} holds a run of a different configuration ({meta.get('config_name')}, "
        f"fingerprint {meta.get('config_fingerprint')}, this config's is {fingerprint}); use "
        "another --workdir or the run's own config")


def _check_workdir_config(workdir: str, config, fingerprint: str) -> None:
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    saved = io_safety.read_json(path, "run config")
    if saved.get("fingerprint") != fingerprint:
      raise ValueError(
          f"{workdir} holds a run of a different configuration ({saved.get('name')}); "
          "use another --workdir or delete that one")
    return
  if jax.process_index() == 0:
    io_safety.atomic_write_json(path, {"name": config.name, "fingerprint": fingerprint,
                                       "config": json.loads(config.to_json_best_effort())},
                                indent=1)
