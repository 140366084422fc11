"""Batches from rendered shards through tf.data or Grain, identical either way.

Both backends consume the same stream of batch numbers ``k = start_batch, ...``;
``batch_example_indices`` maps ``k`` to example indices and
``BatchAssembler`` reads, decodes and stacks those records. Only the
parallelism/prefetch machinery differs, so the batches are equal by construction.

Order. Training: epoch ``e`` visits ``np.random.default_rng([seed, e]).permutation(n)``
in batches of the global batch size, dropping the epoch's remainder, forever.
Evaluation: examples ``0..n-1`` once, the last partial batch kept.

Multi-host: every process reads the contiguous slice
``[p * B/P, (p + 1) * B/P)`` of each global batch, so the P processes together
cover the global batch exactly.

Dynamic mixing (train only, needs shards rendered with ``data.store_images``):
see ``BatchAssembler._dynamic_mix``. Talker images of different mixtures are
remixed at a random target-to-interferer ratio drawn from ``data.tir_db_range``; the talkers
of one remix are always different speakers.
Direct-path targets come from the stored ``direct`` field (each talker's
direct path at the reference mic) scaled by the same gain, so both target kinds
work; the talkers of one remix come from different rooms, whose metadata
(``room_dims``, ``rt60``, ``room_index``) is that of source 0's record.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from data_pipeline import array as array_lib
from data_pipeline import shards

AUDIO_KEYS = ("mixture", "reverberant", "direct", "noise", "images", "reverberant_targets",
              "direct_targets", "noise_targets")
PER_SOURCE_KEYS = ("azimuth_deg", "distance_m", "drr_db", "speaker_index", "speaker_sex", "f0_hz")
DYNAMIC_MIXING_STREAM = 7919  # separates the remix random stream from the epoch permutations

# Batch joins: extra per-example arrays keyed by `example_id`, added to every batch (e.g. the
# stored stage-1 latents of CNUNet-TS, spatialsep_jax/latent_store.py). A factory
# `factory(config, split, manifest)` returns None (not used by this config) or a picklable
# join with `signature` {key: (shape with batch dim None, dtype)} and
# `__call__(example_ids [b]) -> {key: [b, ...]}`. Register with `register_batch_join`.
BATCH_JOIN_FACTORIES: list = []


def register_batch_join(factory) -> None:
  if factory not in BATCH_JOIN_FACTORIES:
    BATCH_JOIN_FACTORIES.append(factory)


def check_manifest(config, manifest: Mapping[str, Any]) -> None:
  """One-line ValueError when the rendered dataset does not fit ``config.data``."""
  data = config.data
  segment_samples = int(round(data.segment_seconds * data.sample_rate))
  fix = "render the dataset for this config (or point data.shards_dir at a matching one)"
  if manifest["sample_rate"] != data.sample_rate:
    raise ValueError(f"shards have sample_rate {manifest['sample_rate']}, config asks "
                     f"{data.sample_rate}; {fix}")
  if manifest["segment_samples"] != segment_samples:
    raise ValueError(f"shards have {manifest['segment_samples']} samples per segment, config "
                     f"asks {segment_samples} (segment_seconds * sample_rate); {fix}")
  if manifest["num_sources"] != data.num_sources:
    raise ValueError(f"shards have num_sources {manifest['num_sources']}, config asks "
                     f"{data.num_sources}; {fix}")
  absent = [c for c in data.input_channels if c not in manifest["channel_names"]]
  if absent:
    raise ValueError(f"input_channels {absent} are not among the stored channels "
                     f"{manifest['channel_names']}; fix data.input_channels or {fix}")
  if manifest["reference_mic"] != data.reference_mic:
    raise ValueError(f"shards hold targets at reference mic {manifest['reference_mic']!r}, "
                     f"config asks {data.reference_mic!r}; {fix}")
  wanted = list(array_lib.target_mics(data))
  if shards.manifest_target_mics(manifest) != wanted:
    raise ValueError(f"shards hold targets at mics {shards.manifest_target_mics(manifest)}, config "
                     f"asks data.target_mics={wanted}; {fix}")
  if data.target not in manifest["target_kinds"]:
    raise ValueError(f"target {data.target!r} is not stored (shards have "
                     f"{manifest['target_kinds']}); set data.target to one of them")
  if data.dynamic_mixing and not manifest.get("store_images", False):
    raise ValueError("data.dynamic_mixing needs per-talker images, but the shards were rendered "
                     "without them; render with data.store_images=True or turn dynamic mixing off")


def audio_shapes(samples: int, num_sources: int, num_input_channels: int,
                 num_target_mics: int) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of a batch's audio keys (what `output_signature` batches)."""
  t, s, mt = samples, num_sources, num_target_mics
  return {"mixture": (t, num_input_channels), "sources": (s, t), "noise": (t,),
          "mixture_reference": (t,), "targets_direct": (s, t, mt),
          "targets_reverberant": (s, t, mt), "targets_noise": (t, mt)}


def training_seed(config) -> int:
  """The seed of initialisation, batch order and dynamic mixing: `train.seed`, or
  `config.seed` (which also fixes the data) when 0 or absent."""
  return int(config.get("train", {}).get("seed", 0) or config.seed)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The training visiting order of epoch ``epoch``: [num_examples] int64."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


@functools.lru_cache(maxsize=4)
def _cached_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return epoch_permutation(seed, epoch, num_examples)


def num_batches(num_examples: int, batch_size: int, train: bool) -> int | None:
  """Batches per pass (eval); None for training (endless)."""
  return None if train else -(-num_examples // batch_size)


def batch_example_indices(batch_number: int, num_examples: int, batch_size: int, *,
                          train: bool, seed: int) -> np.ndarray:
  """Example indices of global batch ``batch_number``: [batch_size] (eval's last: fewer)."""
  if train:
    batches_per_epoch = num_examples // batch_size
    if batches_per_epoch == 0:
      raise ValueError(f"training batch size {batch_size} exceeds the {num_examples} examples "
                       "of the split; lower the batch size or render more examples")
    epoch, position = divmod(batch_number, batches_per_epoch)
    start = position * batch_size
    return _cached_permutation(seed, epoch, num_examples)[start:start + batch_size]
  start = batch_number * batch_size
  if not 0 <= start < num_examples:
    raise IndexError(f"eval batch {batch_number} is past the {num_examples} examples")
  return np.arange(start, min(start + batch_size, num_examples))


def process_slice(global_indices: np.ndarray, global_batch_size: int, process_index: int,
                  process_count: int) -> np.ndarray:
  """This process's contiguous part of a global batch: [global_batch_size // process_count] or fewer.

  A short (final eval) batch is cut at the same offsets, so late processes may get
  fewer or no examples.
  """
  if global_batch_size % process_count:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {process_count} "
                     "processes; pick a multiple of jax.process_count()")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  local = global_batch_size // process_count
  return global_indices[process_index * local:(process_index + 1) * local]


_HALF_EXPONENT_SHIFT = np.float32(2.0 ** 112)  # 2 ** (127 - 15): float16 -> float32 bias
_SMALLEST_SUBNORMAL = np.float32(2.0 ** -149)


def half_to_host(out: np.ndarray, values: np.ndarray) -> None:
  """out[...] = values: a copy, or for float16 -> float32 a bit-exact conversion ~2x numpy's.

  Hand-written because numpy's float16 -> float32 cast is scalar code in builds whose
  baseline lacks F16C (~0.5 G samples/s per core, the largest cost of a float32 batch).
  The sign-extended float16 bits shifted into float32 position, with the three spare
  exponent bits cleared, are the float32 of value * 2**-112 (subnormals included), so
  one multiply by 2**112 finishes it; four SIMD passes. Falls back to numpy's cast for
  inf/NaN (|result| >= 2**16, beyond float16's largest finite 65504) and in threads
  that treat subnormal inputs as zero (DAZ, set by some runtimes' worker threads).
  tests/test_loader.py checks every float16 bit pattern against numpy.
  """
  if not (out.dtype == np.float32 and values.dtype == np.float16):
    out[...] = values
    return
  if _SMALLEST_SUBNORMAL * _HALF_EXPONENT_SHIFT == 0:  # DAZ in this thread
    np.copyto(out, values, casting="unsafe")
    return
  bits = out.view(np.int32)
  as_int16 = np.dtype(np.int16).newbyteorder(values.dtype.byteorder)
  np.copyto(bits, values.view(as_int16))  # sign-extends
  np.left_shift(bits, 13, out=bits)
  np.bitwise_and(bits, np.int32(-0x70000001), out=bits)  # keep sign | 5-bit exponent | mantissa
  np.multiply(out, _HALF_EXPONENT_SHIFT, out=out)
  if out.size and (out.max() >= 65536.0 or out.min() <= -65536.0):  # inf or NaN present
    np.copyto(out, values, casting="unsafe")


class BatchAssembler:
  """Batch number -> numpy batch dict (DESIGN.md batch contract); picklable, opens shards lazily."""

  def __init__(self, config, shards_dir: str, split: str, *, train: bool, batch_size: int,
               process_index: int, process_count: int):
    self.shards_dir, self.split, self.train = shards_dir, split, train
    self.manifest = shards.read_manifest(shards_dir)
    check_manifest(config, self.manifest)
    shards.split_paths(shards_dir, self.manifest, split)  # fail early on a missing/partial split
    self.num_examples = int(sum(s["num_examples"] for s in self.manifest["splits"][split]))
    if train and self.num_examples < batch_size:
      raise ValueError(f"the {split} split of {shards_dir} has {self.num_examples} examples, fewer "
                       f"than the training batch size {batch_size}; lower train.batch_size or "
                       f"render more examples (data.num_examples.{split})")
    self.spec = shards.spec_from_manifest(self.manifest)
    # Batch order and dynamic mixing follow the training seed (the data follow config.seed).
    self.batch_size, self.seed = batch_size, training_seed(config)
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = batch_size // process_count
    process_slice(np.arange(0), batch_size, process_index, process_count)  # validates the split
    names = self.manifest["channel_names"]
    self.input_channels = np.array([names.index(c) for c in config.data.input_channels])
    self.reference_channel = names.index(self.manifest["reference_mic"])
    self.target = config.data.target
    self.target_mics = shards.manifest_target_mics(self.manifest)
    self.target_channels = np.array([names.index(c) for c in self.target_mics])
    self.stored_targets = shards.stores_target_fields(self.target_mics, self.manifest["reference_mic"])
    self.host_audio_dtype = np.dtype(config.data.get("host_audio_dtype", "float32"))
    self.dynamic_mixing = bool(config.data.dynamic_mixing) and train
    self.tir_db_range = tuple(config.data.tir_db_range)
    if self.dynamic_mixing and self.local_batch_size < self.manifest["num_sources"]:
      raise ValueError(f"dynamic mixing needs at least {self.manifest['num_sources']} examples per "
                       f"process batch, got {self.local_batch_size}; raise the batch size")
    self.metadata_keys = [k for k in self.spec if k not in AUDIO_KEYS]
    self.decode_keys = (["mixture", "direct", "reverberant", "noise"] + self.metadata_keys
                        + (["images"] if self.dynamic_mixing else [])
                        + (["direct_targets", "reverberant_targets", "noise_targets"]
                           if self.stored_targets else []))
    self.joins = [join for join in (factory(config, split, self.manifest)
                                    for factory in BATCH_JOIN_FACTORIES) if join is not None]
    self._source = None
    shards.keep_freed_memory()  # before the loader's threads start (see there)
    # Opened here, not first in a loader thread, so that a damaged shard is one ShardError
    # from make_loader rather than an error wrapped by tf.data or Grain.
    _ = self.source

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_source"] = None
    return state

  @property
  def source(self):
    if self._source is None:
      shards.keep_freed_memory()  # here, so that Grain's worker processes get it too
      _, self._source = shards.open_split(self.shards_dir, self.split)
    return self._source

  def output_signature(self) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
    """Per-key (shape with batch dim None, dtype) of an assembled batch."""
    signature = {key: ((None,) + shape, self.host_audio_dtype) for key, shape in audio_shapes(
        self.manifest["segment_samples"], self.manifest["num_sources"], len(self.input_channels),
        len(self.target_mics)).items()}
    for key in self.metadata_keys:
      shape, dtype = self.spec[key]
      signature[key] = ((None,) + shape, dtype)
    for join in getattr(self, "joins", ()):
      signature.update(join.signature)
    return signature

  def example_indices(self, batch_number: int) -> np.ndarray:
    """This process's example indices of batch ``batch_number``."""
    global_indices = batch_example_indices(batch_number, self.num_examples, self.batch_size,
                                           train=self.train, seed=self.seed)
    return process_slice(global_indices, self.batch_size, self.process_index, self.process_count)

  def __call__(self, batch_number: int) -> dict[str, np.ndarray]:
    indices = self.example_indices(int(batch_number))
    records = self.read_records(indices)
    if self.dynamic_mixing:
      batch = self._dynamic_mix(records, int(batch_number))
    else:
      batch = self._stack(records)
    for join in self.joins:
      batch.update(join(batch["example_id"]))
    return batch

  def read_records(self, indices: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Decoded records (views of their bytes) of `indices`, in that order.

    One record at a time in file order, in the calling thread: the loaders already run
    several batches in parallel, and ``__getitems__`` would start a thread pool per
    batch (slower here, see shards.READER_OPTIONS).
    """
    source = self.source
    raw = [None] * len(indices)
    try:
      for slot in np.argsort(indices, kind="stable"):
        raw[slot] = source[int(indices[slot])]
      return [shards.decode_record(data, self.spec, self.decode_keys) for data in raw]
    except (RuntimeError, ValueError) as error:  # a shard changed after it was opened
      raise shards.unreadable_split(self.shards_dir, self.manifest, self.split, error) from None

  def _stack(self, records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    signature = self.output_signature()
    b = len(records)
    batch = {key: np.empty((b,) + shape[1:], dtype) for key, (shape, dtype) in signature.items()}
    channels = self._channel_selection()
    # The reference mic is usually an input too: copy it from the converted mixture
    # (float16 -> float32 conversion is the costliest step of a float32 batch).
    selected = np.arange(len(self.manifest["channel_names"]))[channels]
    in_mixture = np.flatnonzero(selected == self.reference_channel)
    for i, record in enumerate(records):  # per example: one converting copy per field
      half_to_host(batch["mixture"][i], record["mixture"][:, channels])
      half_to_host(batch["sources"][i], record[self.target])
      half_to_host(batch["noise"][i], record["noise"])
      if self.stored_targets:
        for kind in ("direct", "reverberant", "noise"):
          half_to_host(batch[f"targets_{kind}"][i], record[f"{kind}_targets"])
      else:  # the target kind and the noise are copied from sources / noise below
        other = "direct" if self.target == "reverberant" else "reverberant"
        half_to_host(batch[f"targets_{other}"][i][..., 0], record[other])
      if len(in_mixture):
        batch["mixture_reference"][i] = batch["mixture"][i, :, in_mixture[0]]
      else:
        batch["mixture_reference"][i] = record["mixture"][:, self.reference_channel]
      for key in self.metadata_keys:
        batch[key][i] = record[key]
    if not self.stored_targets:
      batch[f"targets_{self.target}"][..., 0] = batch["sources"]
      batch["targets_noise"][..., 0] = batch["noise"]
    return batch

  def _channel_selection(self):
    """input_channels as a slice where they are a run of stored channels (no gather copy)."""
    first = int(self.input_channels[0])
    if np.array_equal(self.input_channels, np.arange(first, first + len(self.input_channels))):
      return slice(first, first + len(self.input_channels))
    return self.input_channels

  @staticmethod
  def _donors(speakers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[b, S] record of source s of slot i, from the batch's [b, S] speaker indices.

    Slot i keeps its own talker 0; talker s > 0 comes from another mixture of the batch (one
    not yet used by the slot) chosen at random among those whose talker s is a speaker not yet
    in the slot. A slot with no such mixture keeps all its own talkers (distinct speakers, as
    rendered), so no remix ever pairs a speaker with themself.
    """
    b, s = speakers.shape
    donors = np.repeat(np.arange(b)[:, None], s, axis=1)
    for i in range(b):
      chosen, taken = [i], {int(speakers[i, 0])}
      for source in range(1, s):
        options = [j for j in range(b) if j not in chosen and int(speakers[j, source]) not in taken]
        if not options:
          break
        chosen.append(int(rng.choice(options)))
        taken.add(int(speakers[chosen[-1], source]))
      else:
        donors[i] = chosen
    return donors

  def _dynamic_mix(self, records: list[dict[str, np.ndarray]], batch_number: int
                   ) -> dict[str, np.ndarray]:
    """Remixes talker s of slot i from record donors[i, s] of this process's batch (`_donors`).

    Source 0 keeps its level; source s > 0 is scaled to a
    target-to-interferer ratio drawn from data.tir_db_range at the reference mic. The
    noise of slot i (its mixture minus its talker images, at every mic) is kept.
    Sources, noise and mixture are recomputed so that, at the reference mic,
    mixture == sum(reverberant sources) + noise.
    """
    b = len(records)
    s = self.manifest["num_sources"]
    ref = self.reference_channel
    rng = np.random.default_rng([self.seed, DYNAMIC_MIXING_STREAM, batch_number, self.process_index])
    donors = self._donors(np.stack([r["speaker_index"] for r in records]), rng)  # [b, S]
    tir_db = rng.uniform(*self.tir_db_range, size=(b, s - 1))

    images = np.stack([r["images"] for r in records]).astype(np.float32)  # [b, S, T, M]
    mixtures = np.stack([r["mixture"] for r in records]).astype(np.float32)  # [b, T, M]
    has_noise = np.isfinite(np.array([r["snr_db"] for r in records]))
    noise = np.where(has_noise[:, None, None], mixtures - images.sum(axis=1), 0.0)  # [b, T, M]

    talker_images = images[donors, np.arange(s)[None, :]]  # [b, S, T, M]
    reference = talker_images[..., ref].copy()  # [b, S, T], before the gains
    power = np.mean(reference ** 2, axis=-1) + 1e-12  # [b, S]
    gains = np.ones((b, s), np.float32)
    gains[:, 1:] = np.sqrt(power[:, :1] / power[:, 1:] * 10.0 ** (-tir_db / 10.0))
    talker_images *= gains[:, :, None, None]
    mixture = talker_images.sum(axis=1) + noise  # [b, T, M]
    talkers = (donors, np.arange(s)[None, :])
    direct = np.stack([r["direct"] for r in records]).astype(np.float32)[talkers]  # [b, S, T]
    sources = {"reverberant": reference, "direct": direct}[self.target] * gains[:, :, None]
    if self.stored_targets:
      direct_targets = np.stack([r["direct_targets"] for r in records]).astype(np.float32)[talkers]
    else:
      direct_targets = direct[..., None]
    batch = {"mixture": np.ascontiguousarray(mixture[..., self.input_channels]),
             "sources": sources.astype(np.float32), "noise": noise[..., ref],
             "mixture_reference": mixture[..., ref],
             "targets_direct": direct_targets * gains[:, :, None, None],
             "targets_reverberant": talker_images[..., self.target_channels],
             "targets_noise": noise[..., self.target_channels]}
    for key in self.metadata_keys:
      values = np.stack([r[key] for r in records])
      if key in PER_SOURCE_KEYS:
        values = values[donors, np.arange(s)[None, :]]
      batch[key] = values
    azimuths = batch["azimuth_deg"]
    pairwise = np.abs(azimuths[:, :, None] - azimuths[:, None, :]) % 360.0
    pairwise = np.minimum(pairwise, 360.0 - pairwise) + np.where(np.eye(s, dtype=bool), np.inf, 0.0)
    if s > 1:
      batch["separation_deg"] = pairwise.min(axis=(1, 2)).astype(np.float32)
      batch["tir_db"] = tir_db[:, 0].astype(np.float32)
    else:  # one talker (enhancement): no interferer, as the rendered one-talker records say
      batch["separation_deg"] = np.full(b, np.nan, np.float32)
      batch["tir_db"] = np.full(b, np.inf, np.float32)
    speech_power = np.mean((reference * gains[:, :, None]).sum(axis=1) ** 2, axis=-1)
    noise_power = np.mean(batch["noise"] ** 2, axis=-1)
    with np.errstate(divide="ignore"):
      snr = 10.0 * np.log10(speech_power / noise_power)
    batch["snr_db"] = np.where(has_noise, snr, np.inf).astype(np.float32)
    signature = self.output_signature()
    joined = {key for join in self.joins for key in join.signature}  # added after this
    return {key: np.asarray(batch[key], signature[key][1]) for key in signature
            if key not in joined}


class BatchLoader:
  """Iterator of batches with a checkpointable position: ``get_state() -> {'next_batch': k}``."""

  def __init__(self, batches: Iterator[dict[str, np.ndarray]], start_batch: int,
               num_batches: int | None, backend: str, assembler: BatchAssembler):
    self._batches, self._next_batch = batches, start_batch
    self.num_batches, self.backend, self.assembler = num_batches, backend, assembler

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    self._next_batch += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"next_batch": self._next_batch}


def resolve_backend(name: str) -> str:
  """auto -> tfdata when TensorFlow imports, else grain."""
  if name not in ("auto", "tfdata", "grain"):
    raise ValueError(f"data.loader must be auto, tfdata or grain, got {name!r}")
  if name != "auto":
    return name
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    return "grain"
  return "tfdata"


def _grain_batches(assembler: BatchAssembler, start_batch: int, stop_batch: int, prefetch: int,
                   workers: int = 0):
  """Batches start_batch.. in order; `workers` > 0 assembles them in that many processes
  (round-robin over batch numbers, so the order and contents do not change)."""
  import grain
  dataset = grain.MapDataset.range(start_batch, stop_batch).map(assembler)
  threads = max(1, min(os.cpu_count() or 1, prefetch))
  batches = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
  if workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (defaults suffice)
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return _plain_arrays(iter(batches))
  return iter(batches)


def _plain_arrays(batches: Iterator[dict]) -> Iterator[dict]:
  """Batches from Grain's worker processes hold SharedMemoryArrays; copies of them (even
  `astype`) keep that class, and unpickling one in another process (the metric pool) fails
  because its segment is gone. A view as ndarray keeps the buffer and drops the class."""
  for batch in batches:
    yield {key: value.view(np.ndarray) if isinstance(value, np.ndarray) else value
           for key, value in batch.items()}


def _tfdata_batches(assembler: BatchAssembler, start_batch: int, stop_batch: int | None):
  from spatialsep_jax import extras
  tf = extras.require("tensorflow", "tf", "data.loader='tfdata'")
  signature = assembler.output_signature()
  keys = list(signature)

  def load(batch_number):
    batch = assembler(int(batch_number))
    return [batch[key] for key in keys]

  def load_tf(batch_number):
    tensors = tf.numpy_function(load, [batch_number], [tf.as_dtype(signature[k][1]) for k in keys],
                                stateful=False)
    for tensor, key in zip(tensors, keys):
      tensor.set_shape(signature[key][0])
    return dict(zip(keys, tensors))

  numbers = (tf.data.Dataset.counter(start_batch) if stop_batch is None
             else tf.data.Dataset.range(start_batch, stop_batch))
  dataset = numbers.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def make_loader(config, shards_dir: str, split: str, *, train: bool,
                batch_size: int | None = None, start_batch: int = 0,
                process_index: int | None = None, process_count: int | None = None) -> BatchLoader:
  """Iterator of this process's batches of ``split``, starting at global batch ``start_batch``.

  batch_size: global batch size (default config.train.batch_size when training,
    config.eval.batch_size otherwise); each process gets batch_size // process_count.
  process_index / process_count: default jax.process_index() / jax.process_count().
  Yields dicts (DESIGN.md, "The batch"): mixture [B, T, C_in], sources [B, S, T], noise [B, T],
  mixture_reference [B, T], targets_direct / targets_reverberant [B, S, T, M_t] and
  targets_noise [B, T, M_t] at data.target_mics (audio in data.host_audio_dtype), and the
  record's metadata keys with a leading B.
  """
  if batch_size is None:
    batch_size = config.train.batch_size if train else config.eval.batch_size
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  assembler = BatchAssembler(config, shards_dir, split, train=train, batch_size=batch_size,
                             process_index=process_index, process_count=process_count)
  total = num_batches(assembler.num_examples, batch_size, train)
  if start_batch < 0 or (total is not None and start_batch > total):
    raise ValueError(f"start_batch {start_batch} outside [0, {total}] for split {split!r}")
  backend = resolve_backend(config.data.loader)
  prefetch = max(1, int(config.data.prefetch))
  if backend == "grain":
    batches = _grain_batches(assembler, start_batch, sys.maxsize if total is None else total,
                             prefetch, int(config.data.get("loader_workers", 0)))
  else:
    batches = _tfdata_batches(assembler, start_batch, total)
  return BatchLoader(batches, start_batch, total, backend, assembler)
