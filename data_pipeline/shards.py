"""Example-record codec, ArrayRecord shards and the dataset manifest.

Records are TFDS-serialised ``tf.train.Example`` protos (every field a
``tfds.features.Tensor`` with ``Encoding.BYTES``: one raw little-endian byte
string per field), written to ArrayRecord files with ``group_size:1`` so that
any record can be read by index. TFDS's numpy path and the ``tf.train.Example``
proto it vendors need no TensorFlow, so the GPU hosts decode shards with numpy
only, while a TFDS user gets the standard metadata
(``dataset_info.json``, ``features.json``) and can call
``tfds.builder_from_directory(shards_dir).as_data_source(split)``.

Layout of a rendered dataset::

  <shards_dir>/manifest.json
  <shards_dir>/dataset_info.json, features.json          (TFDS, once complete)
  <shards_dir>/<split>/spatialsep-<split>.array_record-00003-of-00016

A shard is written to ``<name>.partial``, fsynced and renamed; only then is it
marked ``complete`` in the manifest, with its size and sha256. A later render deletes
leftover ``.partial`` files and redoes their shards and every complete shard whose file is
missing or whose size or checksum differs. Opening a split checks the sizes of its shards
(``verify_shards`` with ``checksums=True`` reads them all).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DATASET_NAME = "spatialsep"
DATASET_VERSION = "2.0.0"
# 2: room_index, room-disjoint splits, per-target-mic fields, shard sizes and checksums.
# Shards of an older record format are refused on open (see check_record_version).
RECORD_VERSION = 2
MANIFEST_NAME = "manifest.json"
PARTIAL_SUFFIX = ".partial"
TARGET_KINDS = ("direct", "reverberant")
# Every record is one chunk: random access costs one read and no decompression
# (float16 audio barely compresses).
WRITER_OPTIONS = "group_size:1,uncompressed"
MANIFEST_REQUIRED_KEYS = (
    "sample_rate", "segment_samples", "channel_names", "reference_mic",
    "num_sources", "speakers")
# Keys every rendered manifest holds (read_manifest refuses one without them).
MANIFEST_KEYS = MANIFEST_REQUIRED_KEYS + (
    "config_hash", "record_version", "target_kinds", "counts", "splits", "examples_per_shard")
SHARD_KEYS = ("file", "start", "num_examples", "complete")
GENERIC_RENDER_COMMAND = ("python launch/render.py --config=<the config> (with the same "
                          "--config.data.* overrides)")

log = logging.getLogger(__name__)


class ManifestError(ValueError):
  """A manifest.json that cannot be used (broken, incomplete, inconsistent, older format)."""


class ShardError(ValueError):
  """A shard file that is missing, truncated or differs from its manifest entry."""


def render_command(manifest: Mapping[str, Any] | None) -> str:
  """The command that (re-)renders a dataset: as recorded at render time, else a template."""
  return (manifest or {}).get("render_command") or GENERIC_RENDER_COMMAND


# ---------------------------------------------------------------- record codec

def stores_target_fields(target_mics: Sequence[str], reference_mic: str) -> bool:
  """Whether records carry the *_targets fields: only when targets are asked at mics other than
  (just) the reference mic, whose targets are the reverberant/direct/noise fields already."""
  return list(target_mics) != [reference_mic]


def record_spec(segment_samples: int, num_sources: int, num_channels: int,
                store_images: bool = False, num_target_mics: int = 0, noise_kind: bool = False
                ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every record field (see DESIGN.md, "Example record").

  T = segment_samples, S = num_sources, M = num_channels, M_t = num_target_mics (0: no
  *_targets fields); noise_kind: records of noisy scenes carry the int `noise_kind` (an index
  into the manifest's `noise_kinds`).
  """
  t, s, m, mt = int(segment_samples), int(num_sources), int(num_channels), int(num_target_mics)
  f16, f32, i32, i64 = (np.dtype(d) for d in ("float16", "float32", "int32", "int64"))
  spec = {
      "mixture": ((t, m), f16),
      "reverberant": ((s, t), f16),
      "direct": ((s, t), f16),
      "noise": ((t,), f16),
      "azimuth_deg": ((s,), f32),
      "distance_m": ((s,), f32),
      "separation_deg": ((), f32),
      "room_dims": ((3,), f32),
      "rt60": ((), f32),
      "room_index": ((), i32),
      "drr_db": ((s,), f32),
      "tir_db": ((), f32),
      "snr_db": ((), f32),
      "speaker_index": ((s,), i32),
      "speaker_sex": ((s,), i32),
      "f0_hz": ((s,), f32),
      "example_id": ((), i64),
  }
  if store_images:
    spec["images"] = ((s, t, m), f16)
  if noise_kind:
    spec["noise_kind"] = ((), i32)
  if mt:
    spec["reverberant_targets"] = ((s, t, mt), f16)
    spec["direct_targets"] = ((s, t, mt), f16)
    spec["noise_targets"] = ((t, mt), f16)
  return dict(sorted(spec.items()))


def spec_from_manifest(manifest: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """The record spec of a rendered dataset, from its manifest."""
  target_mics = manifest_target_mics(manifest)
  stored = stores_target_fields(target_mics, manifest["reference_mic"])
  return record_spec(manifest["segment_samples"], manifest["num_sources"],
                     len(manifest["channel_names"]), manifest.get("store_images", False),
                     len(target_mics) if stored else 0, bool(manifest.get("noise_kinds")))


def manifest_target_mics(manifest: Mapping[str, Any]) -> list[str]:
  """The mics a rendered dataset holds targets at (the reference mic when not recorded)."""
  return list(manifest.get("target_mics") or [manifest["reference_mic"]])


def tfds_features(spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]):
  """The ``tfds.features.FeaturesDict`` that describes (and serialises) a record."""
  import tensorflow_datasets as tfds  # heavy import, only where TFDS is used
  return tfds.features.FeaturesDict({
      key: tfds.features.Tensor(shape=shape, dtype=dtype,
                                encoding=tfds.features.Encoding.BYTES)
      for key, (shape, dtype) in spec.items()})


def _example_proto_class():
  from tensorflow_datasets.proto import tf_example_pb2  # the vendored proto, no TF
  return tf_example_pb2.Example


def check_record(record: Mapping[str, Any], spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]
                 ) -> dict[str, np.ndarray]:
  """Casts a record to the spec's dtypes; one-line ValueError on a missing key or wrong shape."""
  missing = sorted(set(spec) - set(record))
  extra = sorted(set(record) - set(spec))
  if missing or extra:
    raise ValueError(f"record keys do not match the record spec: missing {missing}, "
                     f"unexpected {extra}; make_example must return exactly the DESIGN.md record")
  out = {}
  for key, (shape, dtype) in spec.items():
    value = np.asarray(record[key])
    if value.shape != shape:
      raise ValueError(f"record field {key!r} has shape {value.shape}, expected {shape}; "
                       "fix the scene's segment length / sources / channels")
    out[key] = np.ascontiguousarray(value, dtype=dtype)
  return out


def encode_record(record: Mapping[str, Any], spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]
                  ) -> bytes:
  """Serialises one example record (dict of arrays) to TFDS ``tf.train.Example`` bytes.

  The bytes are deterministic (map keys sorted), so identical records give
  identical shards.
  """
  example_class = _example_proto_class()
  example = example_class()
  feature_map = example.features.feature
  for key, value in check_record(record, spec).items():
    feature_map[key].bytes_list.value.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
  return example.SerializeToString(deterministic=True)


def decode_record(data: bytes, spec: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                  keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Parses record bytes into read-only numpy views of `data` (no copies of audio).

  keys: the fields to return (default all of the spec).
  """
  fields = cached_byte_fields(data)
  out = {}
  for key in spec if keys is None else keys:
    shape, dtype = spec[key]
    if key not in fields:
      raise ValueError(f"record has no field {key!r}; the shards were rendered without it")
    out[key] = np.frombuffer(fields[key], dtype=dtype.newbyteorder("<")).reshape(shape)
  return out


class _Layout:
  """Where each field's payload sits in a serialised record, plus the bytes around them.

  All records of a dataset have the same fields and sizes and are serialised
  deterministically, so their wire bytes differ only inside the payloads. A
  record whose non-payload bytes (the gaps) equal the cached ones has exactly
  the cached parse; checking ~20 short gaps costs microseconds where walking the
  wire format in Python costs ~0.1 ms per record.
  """

  def __init__(self, data: bytes):
    view = memoryview(data)
    spans = sorted((start, stop, key) for key, (start, stop) in example_field_spans(view).items())
    self.size = len(view)
    self.fields = {key: (start, stop) for start, stop, key in spans}
    bounds = [0] + [b for start, stop, _ in spans for b in (start, stop)] + [len(view)]
    self.gaps = [(bounds[i], bounds[i + 1], bytes(view[bounds[i]:bounds[i + 1]]))
                 for i in range(0, len(bounds), 2)]

  def matches(self, view: memoryview) -> bool:
    return len(view) == self.size and all(view[a:b] == gap for a, b, gap in self.gaps)


_LAYOUTS: dict[int, _Layout] = {}


def cached_byte_fields(data: bytes) -> dict[str, memoryview]:
  """``example_byte_fields`` via a per-record-size cached layout (see ``_Layout``)."""
  view = memoryview(data)
  layout = _LAYOUTS.get(len(view))
  if layout is None or not layout.matches(view):
    layout = _Layout(view)
    _LAYOUTS[len(view)] = layout  # racing threads write equal layouts
  return {key: view[start:stop] for key, (start, stop) in layout.fields.items()}


def _varint(view: memoryview, position: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = view[position]
    position += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, position
    shift += 7


def _length_delimited(view: memoryview, start: int, end: int):
  """(field number, payload start, payload stop) of each length-delimited field in
  view[start:end]."""
  position = start
  while position < end:
    tag, position = _varint(view, position)
    if tag & 7 != 2:
      raise ValueError("record is not a tf.train.Example of byte fields; re-render the shards")
    size, position = _varint(view, position)
    yield tag >> 3, position, position + size
    position += size


def example_field_spans(data) -> dict[str, tuple[int, int]]:
  """{feature name: (start, stop) of its single bytes value} in a serialised tf.train.Example.

  Hand-written for speed: protobuf's parser copies every bytes field (about 0.6 GB/s on
  a 2-core host, more than half of a batch's time); walking the wire format
  (Example.features=1 -> Features.feature=1 map entries {key=1, value=2} ->
  Feature.bytes_list=1 -> BytesList.value=1) locates the payloads without copying.
  `tests/test_shards.py` checks it against the proto decoder and TFDS.
  """
  view = memoryview(data)
  fields = {}
  for number, f_start, f_stop in _length_delimited(view, 0, len(view)):
    if number != 1:
      continue
    for entry_number, e_start, e_stop in _length_delimited(view, f_start, f_stop):
      if entry_number != 1:
        continue
      key, value = None, None
      for part_number, p_start, p_stop in _length_delimited(view, e_start, e_stop):
        if part_number == 1:
          key = bytes(view[p_start:p_stop]).decode()
        elif part_number == 2:
          for kind, k_start, k_stop in _length_delimited(view, p_start, p_stop):
            if kind == 1:  # bytes_list
              for _, v_start, v_stop in _length_delimited(view, k_start, k_stop):
                value = (v_start, v_stop)
                break
      if key is not None and value is not None:
        fields[key] = value
  return fields


def example_byte_fields(data) -> dict[str, memoryview]:
  """{feature name: its single bytes value} of a serialised tf.train.Example, as zero-copy views."""
  view = memoryview(data)
  return {key: view[start:stop] for key, (start, stop) in example_field_spans(view).items()}


# ---------------------------------------------------------------- file layout

def shard_path(shards_dir: str, split: str, shard_index: int, num_shards: int) -> str:
  """``<shards_dir>/<split>/spatialsep-<split>.array_record-00003-of-00016`` (TFDS naming)."""
  return os.path.join(shards_dir, split, _shard_name(split, shard_index, num_shards))


def _shard_name(split: str, shard_index: int, num_shards: int) -> str:
  return f"{DATASET_NAME}-{split}.array_record-{shard_index:05d}-of-{num_shards:05d}"


def shard_ranges(num_examples: int, examples_per_shard: int) -> list[tuple[int, int]]:
  """[start, stop) example indices of each shard of a split (the last may be short)."""
  if examples_per_shard < 1:
    raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard}")
  return [(start, min(start + examples_per_shard, num_examples))
          for start in range(0, num_examples, examples_per_shard)]


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_shard(path: str, encoded_records) -> int:
  """Writes an iterable of record bytes to ``path`` atomically; returns the record count.

  The records go to ``path + '.partial'``, which is fsynced and renamed, so a
  killed writer never leaves a truncated file under the final name.
  """
  from array_record.python.array_record_module import ArrayRecordWriter
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + PARTIAL_SUFFIX
  try:
    writer = ArrayRecordWriter(partial, WRITER_OPTIONS)
    count = 0
    try:
      for data in encoded_records:
        writer.write(data)
        count += 1
    finally:
      writer.close()
    with open(partial, "rb+") as f:
      os.fsync(f.fileno())
  except (OSError, RuntimeError, ValueError) as e:
    from spatialsep_jax import io_safety
    if io_safety.is_disk_full(e):  # name the shard being written, not the writer's internals
      raise io_safety.DiskFullError(getattr(e, "errno", None) or errno.ENOSPC,
                                    io_safety.disk_full_message(e, partial), partial) from e
    raise
  os.replace(partial, path)
  _fsync_dir(os.path.dirname(path))
  return count


def remove_partial_shards(shards_dir: str) -> list[str]:
  """Deletes half-written shards left by a killed render; returns their paths."""
  leftovers = sorted(glob.glob(os.path.join(shards_dir, "*", "*" + PARTIAL_SUFFIX)))
  for path in leftovers:
    os.remove(path)
  return leftovers


# ---------------------------------------------------------------- manifest

def manifest_path(shards_dir: str) -> str:
  return os.path.join(shards_dir, MANIFEST_NAME)


def read_manifest(shards_dir: str, validate: bool = True) -> dict[str, Any]:
  """The manifest of ``shards_dir``; ManifestError (one line naming the file and the render
  command) when it is not JSON, lacks a key, is of an older record format or its shard list
  disagrees with its counts. ``validate=False`` only parses it (the renderer, which repairs)."""
  path = manifest_path(shards_dir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {MANIFEST_NAME} in {shards_dir!r}; render the dataset first "
                            "(or point data.shards_dir at a rendered one)")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (ValueError, UnicodeDecodeError) as error:
    raise ManifestError(f"{path} is not valid JSON ({error}); re-render the dataset (this "
                        f"rewrites the manifest): {GENERIC_RENDER_COMMAND}") from None
  if not isinstance(manifest, dict):
    raise ManifestError(f"{path} holds a {type(manifest).__name__}, not a manifest object; "
                        f"re-render the dataset: {GENERIC_RENDER_COMMAND}")
  if validate:
    check_manifest_structure(manifest, path)
  return manifest


def check_manifest_structure(manifest: Mapping[str, Any], path: str) -> None:
  """ManifestError unless ``manifest`` (read from ``path``) is a complete manifest of this record
  format whose shards cover each split's count exactly, in order."""
  fix = f"re-render the dataset: {render_command(manifest)}"
  version = manifest.get("record_version", 1)
  if not isinstance(version, int) or version < RECORD_VERSION:
    raise ManifestError(
        f"{path}: shards of record format v{version}, this code reads v{RECORD_VERSION} "
        f"(room-disjoint splits, room_index, target mics, shard checksums); {fix} "
        "(into a new data.shards_dir, or delete the old one)")
  missing = [key for key in MANIFEST_KEYS if key not in manifest]
  if missing:
    raise ManifestError(f"{path} lacks {', '.join(missing)}; {fix}")
  if not isinstance(manifest["splits"], dict) or not isinstance(manifest["counts"], dict):
    raise ManifestError(f"{path}: 'splits' and 'counts' must be objects; {fix}")
  for split, split_shards in manifest["splits"].items():
    if not isinstance(split_shards, list) or not all(
        isinstance(shard, dict) and all(k in shard for k in SHARD_KEYS) for shard in split_shards):
      raise ManifestError(f"{path}: the shard list of split {split!r} lacks "
                          f"{'/'.join(SHARD_KEYS)} entries; {fix}")
    start = 0
    for shard in split_shards:
      if shard["start"] != start:
        raise ManifestError(f"{path}: shard {shard['file']} starts at example {shard['start']}, "
                            f"expected {start}; {fix}")
      start += shard["num_examples"]
    if manifest["counts"].get(split) != start:
      raise ManifestError(f"{path}: split {split!r} has {start} examples in its shards but counts "
                          f"says {manifest['counts'].get(split)}; {fix}")


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def shard_problem(shards_dir: str, shard: Mapping[str, Any], checksum: bool = False) -> str | None:
  """Why a complete shard's file does not match its manifest entry (None when it does): missing,
  of another size, or (``checksum``) of another sha256. Entries without size/sha256 are not
  compared on that field."""
  path = os.path.join(shards_dir, shard["file"])
  if not os.path.isfile(path):
    return "missing"
  size = os.path.getsize(path)
  if shard.get("size") is not None and size != shard["size"]:
    kind = "truncated" if size < shard["size"] else "larger than rendered"
    return f"{kind} ({size} bytes, the manifest says {shard['size']})"
  if checksum and shard.get("sha256") and file_sha256(path) != shard["sha256"]:
    return "changed since it was rendered (sha256 differs from the manifest)"
  return None


def verify_shards(shards_dir: str, manifest: Mapping[str, Any], splits: Sequence[str] | None = None,
                  checksums: bool = False) -> None:
  """ShardError naming the first complete shard of ``splits`` (default all) that fails
  ``shard_problem`` and the command that re-renders it."""
  bad = [(shard["file"], problem)
         for split in (manifest["splits"] if splits is None else splits)
         for shard in manifest["splits"].get(split, []) if shard["complete"]
         for problem in [shard_problem(shards_dir, shard, checksums)] if problem]
  if bad:
    others = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise ShardError(f"shard {os.path.join(shards_dir, bad[0][0])} is {bad[0][1]}{others}; "
                     f"re-render it with {render_command(manifest)} (render.py redoes the shards "
                     "that fail this check and keeps the others)")


def write_manifest(shards_dir: str, manifest: Mapping[str, Any]) -> None:
  """Atomically replaces ``manifest.json`` (temp file, fsync, rename)."""
  os.makedirs(shards_dir, exist_ok=True)
  path = manifest_path(shards_dir)
  partial = path + PARTIAL_SUFFIX
  with open(partial, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)
  _fsync_dir(shards_dir)


def new_manifest(config_hash: str, splits: Mapping[str, int], examples_per_shard: int,
                 manifest_extra: Mapping[str, Any]) -> dict[str, Any]:
  """A manifest with every shard planned and none complete.

  manifest_extra must hold sample_rate, segment_samples, channel_names,
  reference_mic, num_sources and speakers (list of {id, sex, f0}); it may hold
  store_images and anything else worth recording.
  """
  missing = [k for k in MANIFEST_REQUIRED_KEYS if k not in manifest_extra]
  if missing:
    raise ValueError(f"manifest_extra lacks {missing}; pass them from the data config")
  if manifest_extra["reference_mic"] not in manifest_extra["channel_names"]:
    raise ValueError(f"reference_mic {manifest_extra['reference_mic']!r} is not one of the "
                     f"channels {list(manifest_extra['channel_names'])}")
  manifest = dict(manifest_extra)
  manifest["channel_names"] = list(manifest["channel_names"])
  manifest.update(
      config_hash=config_hash,
      dataset_name=DATASET_NAME,
      dataset_version=DATASET_VERSION,
      store_images=bool(manifest_extra.get("store_images", False)),
      record_version=RECORD_VERSION,
      target_mics=list(manifest_extra.get("target_mics") or [manifest_extra["reference_mic"]]),
      target_kinds=list(TARGET_KINDS),
      record_format="tfds tf.train.Example (Tensor fields, Encoding.BYTES) in ArrayRecord",
      examples_per_shard=int(examples_per_shard),
      counts={split: int(n) for split, n in splits.items()},
      splits={})
  for split, num_examples in splits.items():
    ranges = shard_ranges(int(num_examples), examples_per_shard)
    manifest["splits"][split] = [
        dict(file=os.path.join(split, _shard_name(split, i, len(ranges))),
             start=start, num_examples=stop - start, complete=False)
        for i, (start, stop) in enumerate(ranges)]
  return manifest


def prepare_manifest(shards_dir: str, config_hash: str, splits: Mapping[str, int],
                     examples_per_shard: int, manifest_extra: Mapping[str, Any]) -> dict[str, Any]:
  """Opens (resume) or starts the manifest of ``shards_dir`` and clears half-written shards.

  Refuses a directory whose complete shards were rendered from another config. A shard stays
  complete only if the manifest says so and its file exists with the recorded size and sha256;
  the others are redone (a broken manifest.json is replaced, and all its shards redone).
  """
  fresh = new_manifest(config_hash, splits, examples_per_shard, manifest_extra)
  old = None
  if os.path.exists(manifest_path(shards_dir)):
    try:
      old = read_manifest(shards_dir, validate=False)
    except ManifestError as error:
      log.warning("%s; rendering every shard afresh", error)
  if old is not None:
    try:
      any_complete = any(s["complete"] for shards in old.get("splits", {}).values()
                         for s in shards)
    except (AttributeError, KeyError, TypeError):
      log.warning("%s has a broken shard list; rendering every shard afresh",
                  manifest_path(shards_dir))
      old, any_complete = {}, False
    if old.get("config_hash") != config_hash and any_complete:
      raise ValueError(
          f"{shards_dir!r} holds shards rendered from config hash {old.get('config_hash')!r}, "
          f"not {config_hash!r}; pick another data.shards_dir (or delete that one)")
    if old.get("config_hash") == config_hash:
      for split, shards in fresh["splits"].items():
        old_by_file = {s["file"]: s for s in old.get("splits", {}).get(split, [])}
        for shard in shards:
          previous = old_by_file.get(shard["file"])
          if (previous is None or not previous.get("complete")
              or previous.get("num_examples") != shard["num_examples"]):
            continue
          problem = shard_problem(shards_dir, previous, checksum=True)
          if problem is None and previous.get("size") is not None and previous.get("sha256"):
            shard.update(complete=True, size=previous["size"], sha256=previous["sha256"])
          else:
            log.warning("re-rendering shard %s: %s", os.path.join(shards_dir, shard["file"]),
                        problem or "no size/checksum recorded")
  remove_partial_shards(shards_dir)
  write_manifest(shards_dir, fresh)
  return fresh


def is_complete(manifest: Mapping[str, Any], split: str | None = None) -> bool:
  splits = [split] if split is not None else list(manifest["splits"])
  return all(s["complete"] for name in splits for s in manifest["splits"][name])


def write_tfds_metadata(shards_dir: str, manifest: Mapping[str, Any]) -> None:
  """Writes ``dataset_info.json`` and ``features.json`` so TFDS can open the shards.

  ``tfds.builder_from_directory(shards_dir).as_data_source(split)`` then works,
  with or without TensorFlow installed.
  """
  from tensorflow_datasets.core import dataset_info, file_adapters, naming, utils
  from tensorflow_datasets.core import splits as split_lib
  template = naming.ShardedFileTemplate(
      data_dir=shards_dir, template="{SPLIT}/{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=DATASET_NAME, filetype_suffix="array_record")
  identity = dataset_info.DatasetIdentity(
      name=DATASET_NAME, version=utils.Version(manifest["dataset_version"]),
      data_dir=shards_dir, module_name="")
  info = dataset_info.DatasetInfo(
      builder=identity, features=tfds_features(spec_from_manifest(manifest)),
      description=("Two-talker mixtures at a head-worn cochlear-implant microphone array "
                   f"(channels {', '.join(manifest['channel_names'])}); see manifest.json."))
  info.set_file_format(file_adapters.FileFormat.ARRAY_RECORD)
  split_infos = []
  for split, shards in manifest["splits"].items():
    num_bytes = sum(os.path.getsize(os.path.join(shards_dir, s["file"])) for s in shards)
    split_infos.append(split_lib.SplitInfo(
        name=split, shard_lengths=[s["num_examples"] for s in shards],
        num_bytes=num_bytes, filename_template=template))
  info.set_splits(split_lib.SplitDict(split_infos))
  info.write_to_directory(shards_dir)


def split_paths(shards_dir: str, manifest: Mapping[str, Any], split: str) -> list[str]:
  """Paths of a split's shards in example order; error if the split is missing or incomplete."""
  if split not in manifest["splits"]:
    raise ValueError(f"split {split!r} is not in {shards_dir!r} (has "
                     f"{sorted(manifest['splits'])}); render it or pick another split")
  if not is_complete(manifest, split):
    raise ValueError(f"split {split!r} in {shards_dir!r} is only partly rendered; finish it "
                     f"with {render_command(manifest)}")
  return [os.path.join(shards_dir, s["file"]) for s in manifest["splits"][split]]


# Reader options for random access by one thread at a time: ArrayRecord's default
# read path hands even a single record to its thread pool, which costs ~5x the read
# itself on a 2-core host; the loaders get their parallelism from their own threads.
READER_OPTIONS = {"max_parallelism": "1"}


def open_split(shards_dir: str, split: str):
  """(manifest, random-access source of record bytes) for one split.

  The source is Grain's ``ArrayRecordDataSource`` (reader options ``READER_OPTIONS``):
  ``len()``, ``source[i]`` and ``source.__getitems__(indices)`` over the split's shards.
  """
  import grain
  manifest = read_manifest(shards_dir)
  paths = split_paths(shards_dir, manifest, split)
  verify_shards(shards_dir, manifest, [split])
  try:
    source = grain.sources.ArrayRecordDataSource(paths, reader_options=READER_OPTIONS)
  except RuntimeError as error:  # ArrayRecord reads every shard's footer here
    raise unreadable_split(shards_dir, manifest, split, error) from None
  return manifest, source


def unreadable_split(shards_dir: str, manifest: Mapping[str, Any], split: str,
                     error: Exception) -> ShardError:
  """The ShardError for a read of ``split`` that failed with ``error``: the shard whose checksum
  fails when one does (all of the split's shards are hashed), else the error itself."""
  try:
    verify_shards(shards_dir, manifest, [split], checksums=True)
  except ShardError as named:
    return named
  first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return ShardError(f"reading split {split!r} of {shards_dir} failed ({first_line}); re-render it "
                    f"with {render_command(manifest)}")


def keep_freed_memory() -> bool:
  """Makes glibc's malloc reuse freed large blocks instead of returning them to the kernel.

  Every record read allocates ~0.7 MB and every batch ~10 MB. With glibc's defaults
  such blocks are mmap'ed fresh and unmapped when freed (or the heap top is trimmed),
  so each byte is page-faulted and zeroed by the kernel again: on a 2-core VM that
  was ~75% of the loader's time (perf: exc_page_fault, clear_page). Raising the
  mmap and trim thresholds (the MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
  tunables, set here because the process is already running) keeps those pages in
  the heap for reuse; the cost is that the process keeps its peak heap. Process-wide
  and idempotent; returns False (no change) where glibc is not the allocator.
  """
  global _MALLOC_TUNED
  if _MALLOC_TUNED is None:
    _MALLOC_TUNED = False
    try:
      import ctypes
      libc = ctypes.CDLL("libc.so.6")
      m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
      _MALLOC_TUNED = bool(libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
                           and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
      pass
  return _MALLOC_TUNED


_MALLOC_TUNED = None
