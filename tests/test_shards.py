"""Record codec, atomic shard writing, manifest checks, TFDS readability."""

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from data_pipeline import shards

CHANNELS = ("L_front", "L_back", "L_tmic", "R_front", "R_back", "R_tmic")
SEGMENT = 48
SOURCES = 2


def fake_example(split: str, index: int, segment_samples: int = SEGMENT,
                 num_sources: int = SOURCES, num_channels: int = 6,
                 store_images: bool = False, noise: bool = True, target_mics=None) -> dict:
  """A deterministic record of the DESIGN.md shape whose mixture is consistent with its parts.

  mixture[:, m] = sum_s images[s, :, m] + noise_m, with the reference mic (index 2)
  noise equal to `noise`; reverberant[s] = images[s, :, 2]; direct = images / 2. With
  `target_mics` (names) the *_targets fields hold the same at those mics.
  """
  rng = np.random.default_rng((index, zlib.crc32(split.encode())))
  t, s, m = segment_samples, num_sources, num_channels
  images = (0.1 * rng.standard_normal((s, t, m))).astype(np.float16)
  noise_multi = (0.01 * rng.standard_normal((t, m)) * noise).astype(np.float16)
  mixture = (images.astype(np.float32).sum(0) + noise_multi).astype(np.float16)
  record = dict(
      mixture=mixture,
      reverberant=images[:, :, 2].copy(),
      direct=(0.5 * images[:, :, 2]).astype(np.float16),
      noise=noise_multi[:, 2].copy(),
      azimuth_deg=rng.uniform(0, 360, s).astype(np.float32),
      distance_m=rng.uniform(1, 2, s).astype(np.float32),
      separation_deg=np.float32(rng.uniform(0, 180)),
      room_dims=rng.uniform(3, 8, 3).astype(np.float32),
      rt60=np.float32(rng.uniform(0.2, 0.8)),
      room_index=np.int32(rng.integers(0, 4)),
      drr_db=rng.normal(size=s).astype(np.float32),
      tir_db=np.float32(rng.uniform(-5, 5)),
      snr_db=np.float32(rng.uniform(0, 15) if noise else np.inf),
      speaker_index=rng.integers(0, 10, s).astype(np.int32),
      speaker_sex=rng.integers(-1, 2, s).astype(np.int32),
      f0_hz=np.array([np.nan] + [120.0] * (s - 1), np.float32),
      example_id=np.int64(index))
  if store_images:
    record["images"] = images
  if target_mics:
    mics = [CHANNELS.index(name) for name in target_mics]
    record["reverberant_targets"] = images[:, :, mics]
    record["direct_targets"] = (0.5 * images[:, :, mics]).astype(np.float16)
    record["noise_targets"] = noise_multi[:, mics]
  return record


def manifest_extra(segment_samples=SEGMENT, store_images=False, **overrides):
  extra = dict(sample_rate=8000, segment_samples=segment_samples, channel_names=list(CHANNELS),
               reference_mic="L_tmic", num_sources=SOURCES, store_images=store_images,
               speakers=[dict(id=f"spk{i}", sex=i % 2, f0=100.0 + i) for i in range(10)])
  extra.update(overrides)
  return extra


def spec(store_images=False):
  return shards.record_spec(SEGMENT, SOURCES, len(CHANNELS), store_images)


def assert_records_equal(a, b):
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
    assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


@pytest.mark.parametrize("store_images", [False, True])
def test_codec_round_trip_is_exact(store_images):
  record = fake_example("train", 3, store_images=store_images)
  data = shards.encode_record(record, spec(store_images))
  decoded = shards.decode_record(data, spec(store_images))
  assert_records_equal(decoded, record)
  assert np.isinf(decoded["snr_db"]) == np.isinf(record["snr_db"])
  assert shards.encode_record(record, spec(store_images)) == data  # deterministic bytes


def test_codec_matches_tfds_numpy_decoder():
  record = fake_example("val", 5)
  data = shards.encode_record(record, spec())
  tfds_decoded = shards.tfds_features(spec()).deserialize_example_np(data)
  assert_records_equal({k: np.asarray(v) for k, v in tfds_decoded.items()}, record)


def test_codec_rejects_wrong_shape_and_keys():
  record = fake_example("train", 0)
  record["mixture"] = record["mixture"][:, :4]
  with pytest.raises(ValueError, match="mixture"):
    shards.encode_record(record, spec())
  record = fake_example("train", 0)
  del record["noise"]
  with pytest.raises(ValueError, match="noise"):
    shards.encode_record(record, spec())


def test_write_shard_is_atomic_and_readable(tmp_path):
  path = shards.shard_path(str(tmp_path), "train", 0, 1)
  records = [shards.encode_record(fake_example("train", i), spec()) for i in range(3)]

  def failing():
    yield records[0]
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    shards.write_shard(path, failing())
  assert not os.path.exists(path) and os.path.exists(path + shards.PARTIAL_SUFFIX)
  assert shards.remove_partial_shards(str(tmp_path)) == [path + shards.PARTIAL_SUFFIX]
  assert shards.write_shard(path, iter(records)) == 3
  import grain
  source = grain.sources.ArrayRecordDataSource([path])
  assert [source[i] for i in range(3)] == records


def test_manifest_refuses_other_config_hash(tmp_path):
  extra = manifest_extra()
  manifest = shards.prepare_manifest(str(tmp_path), "hashA", {"train": 4}, 2, extra)
  assert [s["file"] for s in manifest["splits"]["train"]] == [
      "train/spatialsep-train.array_record-00000-of-00002",
      "train/spatialsep-train.array_record-00001-of-00002"]
  # No complete shard yet: another hash may take the directory over.
  manifest = shards.prepare_manifest(str(tmp_path), "hashB", {"train": 4}, 2, extra)
  path = os.path.join(str(tmp_path), manifest["splits"]["train"][0]["file"])
  shards.write_shard(path, iter([]))
  manifest["splits"]["train"][0].update(complete=True, size=os.path.getsize(path),
                                        sha256=shards.file_sha256(path))
  shards.write_manifest(str(tmp_path), manifest)
  with pytest.raises(ValueError, match="pick another data.shards_dir"):
    shards.prepare_manifest(str(tmp_path), "hashC", {"train": 4}, 2, extra)
  resumed = shards.prepare_manifest(str(tmp_path), "hashB", {"train": 4}, 2, extra)
  assert [s["complete"] for s in resumed["splits"]["train"]] == [True, False]


def test_manifest_requires_fields():
  extra = manifest_extra()
  del extra["sample_rate"]
  with pytest.raises(ValueError, match="sample_rate"):
    shards.new_manifest("h", {"train": 2}, 2, extra)
  with pytest.raises(ValueError, match="reference_mic"):
    shards.new_manifest("h", {"train": 2}, 2, manifest_extra(reference_mic="nose"))


NO_TF_SCRIPT = r"""
import site, sys
site.addsitedir(sys.argv[2])
import numpy as np
import tensorflow_datasets as tfds
from data_pipeline import shards
source = tfds.builder_from_directory(sys.argv[1]).as_data_source("val")
manifest, raw = shards.open_split(sys.argv[1], "val")
spec = shards.spec_from_manifest(manifest)
for i in range(len(source)):
  mine = shards.decode_record(raw[i], spec)
  assert set(mine) == set(source[i])
  for key in mine:
    np.testing.assert_array_equal(mine[key], np.asarray(source[i][key]))
assert "tensorflow" not in sys.modules
print("ok", len(source))
"""


def test_tfds_reads_rendered_shards_without_tensorflow(tmp_path):
  from data_pipeline import render
  import functools
  render.render_dataset(str(tmp_path), {"val": 5}, 2, functools.partial(fake_example),
                        manifest_extra(), "hash", num_workers=0, progress=False)
  for name in ("dataset_info.json", "features.json", "manifest.json"):
    assert os.path.exists(tmp_path / name)
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["counts"] == {"val": 5}
  assert [s["num_examples"] for s in manifest["splits"]["val"]] == [2, 2, 1]
  # A site-packages without TensorFlow, as on the GPU hosts: links to everything else.
  no_tf_site = tmp_path / "site_without_tf"
  no_tf_site.mkdir()
  site_packages = os.path.dirname(os.path.dirname(np.__file__))
  for name in os.listdir(site_packages):
    if name == "tensorflow" or name.startswith(("tensorflow-", "tensorflow_cpu", "tensorflow_io")):
      continue
    os.symlink(os.path.join(site_packages, name), no_tf_site / name)
  result = subprocess.run([sys.executable, "-S", "-c", NO_TF_SCRIPT, str(tmp_path), str(no_tf_site)],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "ok 5"


def test_wire_format_walk_equals_the_protobuf_parser():
  from tensorflow_datasets.proto import tf_example_pb2
  spec = shards.record_spec(segment_samples=80, num_sources=2, num_channels=6, store_images=True)
  rng = np.random.default_rng(1)
  record = {key: rng.normal(size=shape).astype(dtype) for key, (shape, dtype) in spec.items()}
  data = shards.encode_record(record, spec)
  parsed = tf_example_pb2.Example.FromString(data).features.feature
  fields = shards.example_byte_fields(data)
  assert set(fields) == set(parsed)
  for key, view in fields.items():
    assert bytes(view) == parsed[key].bytes_list.value[0], key


def test_cached_layout_decode_equals_the_protobuf_parser():
  """decode_record reuses a cached field layout; every record must still parse as protobuf does."""
  from tensorflow_datasets.proto import tf_example_pb2
  plain, with_images = spec(False), spec(True)
  encoded = []
  for index in range(6):  # alternate two record sizes so the cache sees both, repeatedly
    store_images = bool(index % 2)
    record = fake_example("train", index, store_images=store_images)
    encoded.append((shards.encode_record(record, with_images if store_images else plain),
                    with_images if store_images else plain))
  # Same length as a real record, different non-payload bytes: must not reuse the layout.
  renamed = tf_example_pb2.Example.FromString(encoded[0][0])
  renamed.features.feature["noisE"].CopyFrom(renamed.features.feature["noise"])
  del renamed.features.feature["noise"]
  encoded.append((renamed.SerializeToString(deterministic=True), None))
  encoded.append(encoded[0])
  for data, record_spec in encoded:
    parsed = tf_example_pb2.Example.FromString(data).features.feature
    fields = shards.cached_byte_fields(data)
    assert set(fields) == set(parsed)
    for key, view in fields.items():
      assert bytes(view) == parsed[key].bytes_list.value[0], key
    if record_spec is not None:
      for key, value in shards.decode_record(data, record_spec).items():
        shape, dtype = record_spec[key]
        expected = np.frombuffer(parsed[key].bytes_list.value[0], dtype).reshape(shape)
        np.testing.assert_array_equal(value, expected, err_msg=key)
  assert len(encoded[-2][0]) == len(encoded[0][0])


def test_keep_freed_memory_is_idempotent():
  first = shards.keep_freed_memory()
  assert shards.keep_freed_memory() is first
  if sys.platform == "linux" and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
    assert first  # glibc accepted both thresholds


def rendered(tmp_path, splits=None, **extra):
  from data_pipeline import render
  import functools
  render.render_dataset(str(tmp_path), splits or {"train": 4, "val": 2}, 2,
                        functools.partial(fake_example), manifest_extra(**extra), "hash",
                        num_workers=0, progress=False)
  return str(tmp_path)


def edit_manifest(directory, change):
  path = os.path.join(directory, "manifest.json")
  with open(path) as f:
    manifest = json.load(f)
  change(manifest)
  with open(path, "w") as f:
    json.dump(manifest, f)
  return path


def one_line_error(function, *args, match):
  with pytest.raises(ValueError, match=match) as info:
    function(*args)
  assert "\n" not in str(info.value), str(info.value)
  return str(info.value)


def test_manifest_records_version_sizes_and_checksums(tmp_path):
  directory = rendered(tmp_path, render_command="python launch/render.py --config=x.py")
  manifest = shards.read_manifest(directory)
  assert manifest["record_version"] == shards.RECORD_VERSION
  assert manifest["target_mics"] == ["L_tmic"]
  for shard in manifest["splits"]["train"]:
    path = os.path.join(directory, shard["file"])
    assert shard["size"] == os.path.getsize(path)
    import hashlib
    assert shard["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("record_version"), r"record format v1.*launch/render.py --config=x.py"),
    (lambda m: m.update(record_version=1), r"record format v1"),
    (lambda m: m.pop("sample_rate"), r"lacks sample_rate"),
    (lambda m: m["counts"].update(train=5), r"split 'train' has 4 examples.*counts says 5"),
    (lambda m: m["splits"]["val"][0].pop("num_examples"), r"shard list of split 'val'"),
    (lambda m: m["splits"]["train"][1].update(start=3), r"starts at example 3, expected 2"),
])
def test_bad_manifest_is_one_line_naming_the_file(tmp_path, change, match):
  directory = rendered(tmp_path, render_command="python launch/render.py --config=x.py")
  path = edit_manifest(directory, change)
  message = one_line_error(shards.read_manifest, directory, match=match)
  assert path in message and "render" in message


@pytest.mark.parametrize("content", ["", "{\"splits\": [", "[1, 2]", "\xff\xfe"])
def test_broken_manifest_json_names_the_file(tmp_path, content):
  directory = rendered(tmp_path)
  with open(os.path.join(directory, "manifest.json"), "w", encoding="latin-1") as f:
    f.write(content)
  message = one_line_error(shards.read_manifest, directory, match="manifest.json")
  assert "launch/render.py" in message and "Expecting value" not in message.split(";")[1]


@pytest.mark.parametrize("damage", ["truncate", "delete", "overwrite"])
def test_damaged_shard_is_named_with_the_render_command(tmp_path, damage):
  directory = rendered(tmp_path, render_command="python launch/render.py --config=x.py")
  manifest = shards.read_manifest(directory)
  shard = manifest["splits"]["train"][1]
  path = os.path.join(directory, shard["file"])
  if damage == "truncate":
    with open(path, "r+b") as f:
      f.truncate(shard["size"] // 2)
  elif damage == "delete":
    os.remove(path)
  else:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
  expected = {"truncate": "truncated", "delete": "missing", "overwrite": "sha256"}[damage]
  if damage == "overwrite":  # same size: the size check passes, the checksum does not
    one_line_error(shards.verify_shards, directory, manifest, ["train"], True,
                   match=expected)
  message = one_line_error(shards.open_split, directory, "train", match=expected)
  assert path in message and "launch/render.py --config=x.py" in message
  shards.open_split(directory, "val")  # the other split is unaffected
