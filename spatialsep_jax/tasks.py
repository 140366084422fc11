"""Evaluation tasks: how a model's outputs are paired with references and scored.

`config.eval.task` picks one:
  separation   outputs `estimates [B, N, T]` against `sources [B, S, T]`, paired by the
               permutation with the best summed SI-SDR (N >= S; extra outputs such as a
               noise estimate stay unscored); improvements over `mixture_reference [B, T]`.
  noisy_separation  (NASS) outputs `estimates [B, S + 1, T]` (talkers + a noise estimate)
               paired with [sources..., noise] by the best summed SI-SDR over all (S + 1)!
               permutations; the talkers are scored in that order, the noise output is not.
  enhancement  output k against target k, no permutation: `estimates [B, K, T]` against
               `config.eval.targets` `[B, K, T]` (or `[B, T]` for one target), e.g.
               "targets_direct:0", the target talker at each ear for binaural enhancement;
               improvements over `config.eval.baseline` (`[B, T]` or `[B, K, T]`, e.g.
               "mixture" for the input at each ear); `select` says how names resolve.
Validation (in the jitted step) reports mean SI-SDR and SI-SDRi per example; evaluation rows
(`evaluation.py`) get one column group per reference, `<metric>_s<k>`, plus their mean.
"""

import dataclasses
import itertools
from typing import Callable

import jax.numpy as jnp
import numpy as np

from spatialsep_jax import losses
from spatialsep_jax import sdr


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  batch_keys: Callable          # config -> batch keys the task reads
  references: Callable          # (outputs or batch arrays, config) helpers below
  align: bool                   # whether estimates are permuted to the references
  # (estimates [B, N, T], batch, config, xp) -> estimates [B, S, T] in reference order, applied
  # before scoring (noisy_separation: the PIT pairing over talkers + noise); None: as they are
  preselect: Callable | None = None


def _as_stack(x):
  return x[:, None, :] if x.ndim == 2 else x


def _separation_keys(config):
  return ("sources", "mixture_reference")


def _key(spec: str) -> str:
  return spec.partition(":")[0]


def select(batch, spec: str):
  """A reference array named by `spec`, as `[B, K, T]` or `[B, T]`:
    "name"       batch[name] as it is (`sources [B, S, T]`, `mixture_reference [B, T]`);
    "name:i"     source i of a per-mic target `[B, S, T, M]` -> `[B, M, T]`, one per mic
                 (e.g. "targets_direct:0": the target talker at each of data.target_mics);
    "mixture", "targets_noise": channels-last `[B, T, C]` -> `[B, C, T]`.
  """
  name, _, index = spec.partition(":")
  value = batch[name]
  if index:
    return jnp.moveaxis(value[:, int(index)], -1, 1)
  if name in ("mixture", "targets_noise"):
    return jnp.moveaxis(value, -1, 1)
  return value


def _enhancement_keys(config):
  return (_key(config.eval.targets), _key(config.eval.baseline))


def _separation_references(batch, config):
  return batch["sources"], batch["mixture_reference"]


def _enhancement_references(batch, config):
  return select(batch, config.eval.targets), select(batch, config.eval.baseline)


def _noisy_separation_keys(config):
  return ("sources", "noise", "mixture_reference")


def _noise_aware_talkers(estimates, batch, config, xp):
  """NASS evaluation: the permutation of the S + 1 outputs against [s_1, ..., s_S, noise] with
  the best summed SI-SDR (as in training), then the talkers' estimates in reference order:
  `[B, S + 1, T]` -> `[B, S, T]`. numpy or jax (`xp`)."""
  sources = batch["sources"]
  references = xp.concatenate([sources, batch["noise"][:, None]], axis=1).astype(xp.float32)
  estimates = estimates.astype(xp.float32)
  if estimates.shape[1] != references.shape[1]:
    raise ValueError(f"the noisy_separation task pairs {estimates.shape[1]} outputs with "
                     f"{references.shape[1]} references (talkers + noise); the model needs "
                     "model.extra_outputs=1 (a noise output)")
  num_sources = sources.shape[1]
  if xp is jnp:
    _, perm = losses.pit(losses.pairwise_neg_sisdr(estimates, references))
    return losses.reorder(estimates, perm)[:, :num_sources]
  scores = sdr.sisdr_db(estimates, references, np, pairwise=True)       # [B, N, M]
  orders = np.array(list(itertools.permutations(range(estimates.shape[1]))))   # [P, M]
  totals = scores[:, orders, np.arange(references.shape[1])].sum(-1)           # [B, P]
  perm = orders[np.argmax(totals, axis=1)]                                      # [B, M]
  return np.take_along_axis(estimates, perm[:, :, None], axis=1)[:, :num_sources]


_TASKS = {
    "separation": Task("separation", _separation_keys, _separation_references, align=True),
    "enhancement": Task("enhancement", _enhancement_keys, _enhancement_references, align=False),
    # NASS (seed 002): S + 1 outputs (talkers + noise), paired with [s_1, ..., s_S, noise] by
    # PIT; the talkers are scored in that order, the noise estimate is not.
    "noisy_separation": Task("noisy_separation", _noisy_separation_keys, _separation_references,
                             align=False, preselect=_noise_aware_talkers),
}
TASK_NAMES = tuple(_TASKS)


def get(name: str) -> "BoundTask":
  if name not in _TASKS:
    raise ValueError(f"config.eval.task={name!r} is not one of {TASK_NAMES}")
  return BoundTask(_TASKS[name])


@dataclasses.dataclass(frozen=True)
class BoundTask:
  task: Task

  @property
  def name(self) -> str:
    return self.task.name

  @property
  def align(self) -> bool:
    return self.task.align

  def batch_keys(self, config) -> tuple:
    return tuple(self.task.batch_keys(config))

  def references(self, batch, config):
    """(references `[B, K, T]`, baseline `[B, 1 or K, T]`) from a batch."""
    references, baseline = self.task.references(batch, config)
    return _as_stack(references), _as_stack(baseline)

  def score_jax(self, outputs: dict, batch: dict, config) -> dict:
    """Per-example mean SI-SDR and SI-SDRi `[B]` (jax, inside the jitted eval step)."""
    references, baseline = self.references(batch, config)
    references = references.astype(jnp.float32)
    estimates = outputs["estimates"].astype(jnp.float32)
    if self.task.preselect is not None:
      estimates = self.task.preselect(estimates, batch, config, jnp)
    if self.align:
      _, perm = losses.pit(losses.pairwise_neg_sisdr(estimates, references))
      estimates = losses.reorder(estimates, perm)
    elif estimates.shape[1] != references.shape[1]:
      raise ValueError(f"the {self.name} task pairs output k with target k, but the model emits "
                       f"{estimates.shape[1]} outputs for {references.shape[1]} targets")
    baseline = jnp.broadcast_to(baseline.astype(jnp.float32), references.shape)
    value = sdr.sisdr_db(estimates, references, jnp).mean(axis=-1)
    unprocessed = sdr.sisdr_db(baseline, references, jnp).mean(axis=-1)
    return {"sisdr": value, "sisdri": value - unprocessed}

  def example_references(self, batch: dict, index: int, config):
    """(references [K, T], baseline [T] or [K, T]) of one example, float32 numpy."""
    references, baseline = self.task.references(batch, config)
    references = np.asarray(references[index], np.float32)  # numpy in, numpy out
    if references.ndim == 1:
      references = references[None]
    return references, np.asarray(baseline[index], np.float32)

  def example(self, estimates: np.ndarray, batch: dict, index: int, config):
    """(estimates [N, T], references [K, T], baseline [T] or [K, T]) of one example, float32."""
    references, baseline = self.example_references(batch, index, config)
    estimates = np.asarray(estimates, np.float32)
    if self.task.preselect is not None:
      one = {key: np.asarray(batch[key][index:index + 1], np.float32)
             for key in self.task.batch_keys(config)}
      estimates = self.task.preselect(estimates[None], one, config, np)[0]
    return estimates, references, baseline
