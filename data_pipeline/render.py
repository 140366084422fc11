"""Render orchestration: examples -> ArrayRecord shards, in parallel, resumable.

Shards are written in example order by the parent process from an ordered
``imap`` over the worker pool, so the bytes of every shard depend only on
``make_example`` (never on the worker count or on scheduling).
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
from collections.abc import Callable, Mapping
from typing import Any

from tqdm.auto import tqdm

from data_pipeline import shards

# Set in each pool worker by _init_worker, so the (possibly large) callable is
# pickled once per worker instead of once per example.
_worker_make_example: Callable[[str, int], dict] | None = None
_worker_spec: dict | None = None


def _init_worker(make_example, spec) -> None:
  global _worker_make_example, _worker_spec
  _worker_make_example, _worker_spec = make_example, spec


def _encode_in_worker(split_and_index: tuple[str, int]) -> bytes:
  split, index = split_and_index
  return shards.encode_record(_worker_make_example(split, index), _worker_spec)


def _encode_in_process(make_example, spec, split_and_index: tuple[str, int]) -> bytes:
  split, index = split_and_index
  return shards.encode_record(make_example(split, index), spec)


def _with_progress(stream, bar):
  for item in stream:
    bar.update(1)
    yield item


def render_dataset(shards_dir: str, splits: Mapping[str, int], examples_per_shard: int,
                   make_example: Callable[[str, int], dict], manifest_extra: Mapping[str, Any],
                   config_hash: str, num_workers: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
  """Renders every missing shard of ``splits`` into ``shards_dir``; returns the manifest.

  splits: split name -> number of examples.
  make_example(split, index): a picklable module-level callable (or
    functools.partial) returning the record of example ``index`` of ``split``
    (DESIGN.md, "Example record"); it must be deterministic by itself.
  manifest_extra: sample_rate, segment_samples, channel_names, reference_mic,
    num_sources, speakers (and optionally store_images, anything else).
  config_hash: identity of the data config; a directory holding complete shards
    of another hash is refused.
  num_workers: worker processes (default: all cores; 0 or 1 renders in this process).

  Complete shards are kept (resume) when their files match the size and sha256 that the
  manifest recorded; half-written, missing or changed ones are redone.
  When all shards exist, TFDS metadata (dataset_info.json, features.json) is
  written next to manifest.json.
  """
  if num_workers is None:
    num_workers = os.cpu_count() or 1
  if num_workers < 0:
    raise ValueError(f"num_workers must be >= 0, got {num_workers}")
  manifest = shards.prepare_manifest(shards_dir, config_hash, splits, examples_per_shard,
                                     manifest_extra)
  spec = shards.spec_from_manifest(manifest)
  missing = [(split, shard_index, shard)
             for split, split_shards in manifest["splits"].items()
             for shard_index, shard in enumerate(split_shards) if not shard["complete"]]
  total = sum(shard["num_examples"] for _, _, shard in missing)

  pool = None
  if missing and num_workers > 1:
    # spawn: workers never inherit JAX/TF runtime state or threads of the parent.
    pool = multiprocessing.get_context("spawn").Pool(
        num_workers, initializer=_init_worker, initargs=(make_example, spec))
    encode_map = functools.partial(pool.imap, _encode_in_worker, chunksize=1)
  else:
    encode_map = functools.partial(map, functools.partial(_encode_in_process, make_example, spec))

  # One ordered stream over all missing shards keeps the workers busy across shard boundaries.
  encoded = iter(encode_map([(split, index) for split, _, shard in missing
                             for index in range(shard["start"], shard["start"] + shard["num_examples"])]))
  try:
    with tqdm(total=total, unit="ex", desc=f"render {os.path.basename(shards_dir)}",
              disable=not progress, smoothing=0.1) as bar:
      for split, shard_index, shard in missing:
        path = os.path.join(shards_dir, shard["file"])
        records = itertools.islice(encoded, shard["num_examples"])
        written = shards.write_shard(path, _with_progress(records, bar))
        if written != shard["num_examples"]:
          raise RuntimeError(f"shard {path} got {written} records, expected {shard['num_examples']}")
        manifest["splits"][split][shard_index].update(
            complete=True, size=os.path.getsize(path), sha256=shards.file_sha256(path))
        shards.write_manifest(shards_dir, manifest)
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()

  if shards.is_complete(manifest):
    shards.write_tfds_metadata(shards_dir, manifest)
  return manifest
