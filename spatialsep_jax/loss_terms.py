"""Loss terms chosen by name: `config.loss.terms` is a weighted set of registered terms.

  config.loss.terms = {"pit": {"term": "pit_sisdr", "weight": 1.0, "clamp_db": 30.0}}

Each entry's key is its label (logged as `loss/<label>`); `term` names the registered
function (default: the label itself), `weight` scales it, every other field is passed to it
as a keyword argument. A term is

  term(outputs: dict, batch: dict, rng: jax.Array, **settings) -> (per_example [B], metrics)

with `outputs` the model's named outputs, `batch` the device batch (only the keys the terms
and the model declare enter the jitted step), `rng` a fresh key per step and term. `metrics`
maps names to `[B]` values (logged as means) and may hold "perm" `[B, M]`, the pairing a
permutation-invariant term chose. The trainer minimises the mean over the batch of
sum_k weight_k * per_example_k.

Register a term from anywhere (a test file included):

  @loss_terms.register("my_term", batch_keys=("sources",))
  def my_term(outputs, batch, rng, *, scale=1.0):
    ...
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from spatialsep_jax import losses
from spatialsep_jax import sdr
from spatialsep_jax import tasks


class LossConfigError(ValueError):
  """A one-line problem with `config.loss` (names the field and the fix)."""


@dataclasses.dataclass(frozen=True)
class TermSpec:
  name: str
  fn: Callable
  batch_keys: tuple[str, ...] | Callable[[dict], tuple[str, ...]]


_TERMS: dict[str, TermSpec] = {}


def register(name: str, *, batch_keys=()):
  """Decorator; `batch_keys` are the batch entries the term reads (or a function of the
  term's settings returning them)."""

  def wrap(fn):
    _TERMS[name] = TermSpec(name, fn, batch_keys)
    return fn

  return wrap


def names() -> tuple[str, ...]:
  _import_builtin_terms()
  return tuple(sorted(_TERMS))


def _import_builtin_terms():
  # Model families that bring their own terms register them on import.
  from spatialsep_jax.models import registry
  registry.names()


@dataclasses.dataclass(frozen=True)
class BoundTerm:
  label: str
  spec: TermSpec
  weight: float
  settings: dict

  @property
  def batch_keys(self) -> tuple[str, ...]:
    keys = self.spec.batch_keys
    return tuple(keys(self.settings) if callable(keys) else keys)

  def __call__(self, outputs, batch, rng):
    return self.spec.fn(outputs, batch, rng, **self.settings)


def _plain(value):
  return tuple(value) if isinstance(value, list) else value


def bind(config) -> list[BoundTerm]:
  """The terms of `config.loss.terms`, validated; raises LossConfigError (one line)."""
  _import_builtin_terms()
  terms = config.loss.get("terms")
  if not terms:
    raise LossConfigError("config.loss.terms is empty; give at least one term, e.g. "
                          "{'pit': {'term': 'pit_sisdr', 'weight': 1.0}}")
  bound = []
  for label, entry in terms.items():
    entry = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
    name = entry.pop("term", label)
    weight = entry.pop("weight", 1.0)
    if name not in _TERMS:
      raise LossConfigError(f"config.loss.terms.{label}: unknown term {name!r}; registered "
                            f"terms: {', '.join(sorted(_TERMS))}")
    if not isinstance(weight, (int, float)) or weight < 0:
      raise LossConfigError(f"config.loss.terms.{label}.weight={weight!r} must be a number >= 0")
    bound.append(BoundTerm(label, _TERMS[name], float(weight),
                           {k: _plain(v) for k, v in entry.items()}))
  return bound


def total_loss(terms: list[BoundTerm], outputs: dict, batch: dict, rng: jax.Array):
  """(per_example [B] weighted sum, metrics {name: [B]}, perm or None)."""
  per_example, metrics, perm = 0.0, {}, None
  for index, term in enumerate(terms):
    value, term_metrics = term(outputs, batch, jax.random.fold_in(rng, index))
    per_example = per_example + term.weight * value
    metrics[f"loss/{term.label}"] = value
    for key, metric in term_metrics.items():
      if key == "perm":
        perm = metric if perm is None else perm
      else:
        metrics[f"{term.label}/{key}"] = metric
  return per_example, metrics, perm


def _reference_keys(settings):
  return (settings.get("targets", "sources"),) + tuple(settings.get("stems", ()))


def _pit_waveform(outputs, batch, pairwise_fn, *, targets="sources", outputs_key="estimates",
                  clamp_db=30.0, stems=(), extra_outputs="unpaired"):
  """PIT over waveforms.

  estimates `[B, N, T]` against references `[B, M, T]` (`batch[targets]`, plus each stem in
  `stems`, e.g. ("noise",) as `[B, T]`, appended as references):
    extra_outputs="unpaired": outputs beyond the references stay out of the loss;
    extra_outputs="permute":  stems join the permutation (NASS: PIT over [s1, s2, n]);
    extra_outputs="fixed":    the last len(stems) outputs are paired with the stems in order,
                              the first M with the targets by PIT; the loss averages all pairs.
  """
  estimates = outputs[outputs_key].astype(jnp.float32)
  references = batch[targets].astype(jnp.float32)
  stem_refs = [batch[key].astype(jnp.float32)[:, None, :] for key in stems]
  if extra_outputs == "permute":
    references = jnp.concatenate([references] + stem_refs, axis=1)
    per_example, perm = losses.pit(pairwise_fn(estimates, references))
  elif extra_outputs == "fixed":
    num_targets = references.shape[1]
    per_example, perm = losses.pit(pairwise_fn(estimates[:, :num_targets], references))
    num_pairs = num_targets
    per_example = per_example * num_targets
    for offset, stem in enumerate(stem_refs):
      index = num_targets + offset
      per_example = per_example + pairwise_fn(estimates[:, index:index + 1], stem)[:, 0, 0]
      num_pairs += 1
    per_example = per_example / num_pairs
  elif extra_outputs == "unpaired":
    if stems:
      raise LossConfigError("stems need extra_outputs='permute' or 'fixed'")
    per_example, perm = losses.pit(pairwise_fn(estimates, references))
  else:
    raise LossConfigError(f"extra_outputs={extra_outputs!r} is not one of "
                          "('unpaired', 'permute', 'fixed')")
  return losses.clamp_loss(per_example, clamp_db), {"perm": perm}


@register("pit_sisdr", batch_keys=_reference_keys)
def pit_sisdr(outputs, batch, rng, **settings):
  """Permutation-invariant negative SI-SDR (the study's loss, clamped at +-clamp_db)."""
  del rng
  return _pit_waveform(outputs, batch, losses.pairwise_neg_sisdr, **settings)


@register("pit_snr", batch_keys=_reference_keys)
def pit_snr(outputs, batch, rng, **settings):
  """Permutation-invariant negative SNR (level-preserving)."""
  del rng
  return _pit_waveform(outputs, batch, losses.pairwise_neg_snr, **settings)


def _per_target(outputs, batch, db_fn, *, targets, outputs_key="estimates", clamp_db=0.0):
  """No PIT: output k against target k. Any layout `[B, ..., T]` shared by both."""
  estimates = outputs[outputs_key].astype(jnp.float32)
  references = tasks.select(batch, targets).astype(jnp.float32)
  if estimates.ndim == references.ndim + 1 and estimates.shape[1] == 1:
    estimates = estimates[:, 0]
  if estimates.shape != references.shape:
    raise LossConfigError(f"output {outputs_key!r} {estimates.shape} and target {targets!r} "
                          f"{references.shape} differ in shape; the model must emit one output "
                          "per target")
  batch_size, length = estimates.shape[0], estimates.shape[-1]
  negative_db = -db_fn(estimates.reshape(batch_size, -1, length),
                       references.reshape(batch_size, -1, length), jnp)
  return losses.clamp_loss(jnp.mean(negative_db, axis=-1), clamp_db), {}


def _target_key(settings):
  return (settings["targets"].partition(":")[0],)


@register("sisdr", batch_keys=_target_key)
def per_target_sisdr(outputs, batch, rng, *, targets, **settings):
  """Negative SI-SDR of each output against its own target (enhancement, per-ear targets);
  `targets` names the batch array as `tasks.select` reads it (e.g. "targets_direct:0")."""
  del rng
  return _per_target(outputs, batch, sdr.sisdr_db, targets=targets, **settings)


@register("snr", batch_keys=_target_key)
def per_target_snr(outputs, batch, rng, *, targets, **settings):
  """Negative SNR of each output against its own target (keeps level, hence ILD)."""
  del rng
  return _per_target(outputs, batch, sdr.snr_db, targets=targets, **settings)


def batch_keys(terms: list[BoundTerm]) -> tuple[str, ...]:
  keys: list[str] = []
  for term in terms:
    keys += [k for k in term.batch_keys if k not in keys]
  return tuple(keys)


__all__ = ["LossConfigError", "BoundTerm", "batch_keys", "bind", "names", "register",
           "total_loss"]
