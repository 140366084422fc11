"""tf.data and Grain loaders: identical batches, channel selection, resume, slicing, remixing."""

import functools
import pickle

import numpy as np
import pytest

from spatialsep_jax.configs import base
from data_pipeline import loader, render, shards
from tests.test_shards import CHANNELS, SEGMENT, fake_example, manifest_extra

NUM_TRAIN, NUM_VAL = 10, 7


def make_config(**data_overrides):
  config = base.get_base_config("smoke")
  config.data.segment_seconds = SEGMENT / config.data.sample_rate
  config.data.input_channels = ("R_front", "L_tmic")
  config.data.target = "reverberant"
  config.seed = 3
  config.data.host_audio_dtype = "float32"  # the host-conversion path; float16 tests set it
  for key, value in data_overrides.items():
    config.data[key] = value
  return config


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("shards"))
  render.render_dataset(path, {"train": NUM_TRAIN, "val": NUM_VAL}, 3,
                        functools.partial(fake_example, store_images=True),
                        manifest_extra(store_images=True), "hash", num_workers=0, progress=False)
  return path


def take(batches, count):
  return [next(batches) for _ in range(count)]


def assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert set(a) == set(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
      assert a[key].dtype == b[key].dtype, key


@pytest.mark.parametrize("train", [True, False])
def test_backends_yield_identical_batches(shards_dir, train):
  per_backend = []
  for backend in ("tfdata", "grain"):
    config = make_config(loader=backend)
    batches = loader.make_loader(config, shards_dir, "train" if train else "val", train=train,
                                 batch_size=4, process_index=0, process_count=1)
    assert batches.backend == backend
    per_backend.append(take(batches, 7) if train else list(batches))
  assert_batches_equal(*per_backend)


@pytest.mark.parametrize("input_channels", [("R_front", "L_tmic"), ("L_back", "L_tmic", "R_front"),
                                            ("R_front", "R_back"),
                                            CHANNELS])
def test_batch_matches_records_and_channel_selection(shards_dir, input_channels):
  config = make_config(loader="grain", input_channels=input_channels)
  batch = next(loader.make_loader(config, shards_dir, "train", train=True, batch_size=4,
                                  process_index=0, process_count=1))
  ids = batch["example_id"]
  np.testing.assert_array_equal(ids, loader.epoch_permutation(config.seed, 0, NUM_TRAIN)[:4])
  assert batch["mixture"].shape == (4, SEGMENT, len(input_channels))
  assert batch["mixture"].dtype == np.float32
  assert batch["sources"].shape == (4, 2, SEGMENT) and batch["noise"].shape == (4, SEGMENT)
  channels = [CHANNELS.index(c) for c in config.data.input_channels]
  for i, example_id in enumerate(ids):
    record = fake_example("train", int(example_id))
    np.testing.assert_array_equal(batch["mixture"][i], record["mixture"][:, channels].astype(np.float32))
    np.testing.assert_array_equal(batch["sources"][i], record["reverberant"].astype(np.float32))
    np.testing.assert_array_equal(batch["noise"][i], record["noise"].astype(np.float32))
    np.testing.assert_array_equal(batch["mixture_reference"][i],
                                  record["mixture"][:, CHANNELS.index("L_tmic")].astype(np.float32))
    for key in ("azimuth_deg", "speaker_index", "rt60", "snr_db", "f0_hz"):
      np.testing.assert_array_equal(batch[key][i], record[key])


def test_training_order_is_epoch_permutations_without_remainder():
  n, b = 10, 4
  indices = [loader.batch_example_indices(k, n, b, train=True, seed=5) for k in range(6)]
  for epoch in range(3):
    permutation = np.random.default_rng([5, epoch]).permutation(n)
    np.testing.assert_array_equal(np.concatenate(indices[2 * epoch:2 * epoch + 2]), permutation[:8])
  with pytest.raises(ValueError, match="exceeds"):
    loader.batch_example_indices(0, 3, 4, train=True, seed=0)


@pytest.mark.parametrize("backend", ["tfdata", "grain"])
@pytest.mark.parametrize("train", [True, False])
def test_resume_at_batch_k(shards_dir, backend, train):
  config = make_config(loader=backend)
  split = "train" if train else "val"
  uninterrupted = loader.make_loader(config, shards_dir, split, train=train, batch_size=2,
                                     process_index=0, process_count=1)
  reference = take(uninterrupted, 4)
  first = loader.make_loader(config, shards_dir, split, train=train, batch_size=2,
                             process_index=0, process_count=1)
  take(first, 2)
  state = first.get_state()
  assert state == {"next_batch": 2}
  resumed = loader.make_loader(config, shards_dir, split, train=train, batch_size=2,
                               start_batch=state["next_batch"], process_index=0, process_count=1)
  assert_batches_equal(take(resumed, 2), reference[2:])
  assert resumed.get_state() == {"next_batch": 4}


def test_process_slices_cover_the_global_batch(shards_dir):
  global_indices = np.arange(100, 112)
  parts = [loader.process_slice(global_indices, 12, p, 3) for p in range(3)]
  np.testing.assert_array_equal(np.concatenate(parts), global_indices)
  with pytest.raises(ValueError, match="divisible"):
    loader.process_slice(global_indices, 12, 0, 5)

  config = make_config(loader="grain")
  for train, split in ((True, "train"), (False, "val")):
    whole = list(zip(range(3), loader.make_loader(config, shards_dir, split, train=train,
                                                  batch_size=4, process_index=0, process_count=1)))
    per_process = [list(zip(range(3), loader.make_loader(
        config, shards_dir, split, train=train, batch_size=4, process_index=p, process_count=2)))
        for p in range(2)]
    for k, batch in whole:
      together = np.concatenate([per_process[p][k][1]["example_id"] for p in range(2)])
      np.testing.assert_array_equal(together, batch["example_id"])
      for p in range(2):
        assert len(per_process[p][k][1]["example_id"]) <= 2


@pytest.mark.parametrize("backend", ["tfdata", "grain"])
def test_eval_pass_covers_every_example_once(shards_dir, backend):
  config = make_config(loader=backend)
  batches = list(loader.make_loader(config, shards_dir, "val", train=False, batch_size=3,
                                    process_index=0, process_count=1))
  assert [len(b["example_id"]) for b in batches] == [3, 3, 1]
  np.testing.assert_array_equal(np.concatenate([b["example_id"] for b in batches]),
                                np.arange(NUM_VAL))


@pytest.mark.parametrize("target", ["reverberant", "direct"])
def test_dynamic_mixing_sums_consistently(shards_dir, target):
  config = make_config(loader="grain", dynamic_mixing=True, target=target,
                       input_channels=CHANNELS)
  batches = loader.make_loader(config, shards_dir, "train", train=True, batch_size=4,
                               process_index=0, process_count=1)
  batch, again = next(batches), next(loader.make_loader(
      config, shards_dir, "train", train=True, batch_size=4, process_index=0, process_count=1))
  assert_batches_equal([batch], [again])  # deterministic
  ref = CHANNELS.index(config.data.reference_mic)
  ids = loader.batch_example_indices(0, NUM_TRAIN, 4, train=True, seed=config.seed)
  records = [fake_example("train", int(i), store_images=True) for i in ids]
  # Brute force: find which record each source came from and its gain, then rebuild.
  for i in range(4):
    own_noise = (records[i]["mixture"].astype(np.float32)
                 - records[i]["images"].astype(np.float32).sum(0))
    rebuilt = own_noise.copy()
    for s in range(2):
      candidates = [r["images"][s].astype(np.float32) for r in records]
      targets = [c[:, ref] if target == "reverberant" else r["direct"][s].astype(np.float32)
                 for c, r in zip(candidates, records)]
      ratios = [np.dot(batch["sources"][i, s], t) / np.dot(t, t) for t in targets]
      errors = [np.abs(batch["sources"][i, s] - g * t).max() for g, t in zip(ratios, targets)]
      donor = int(np.argmin(errors))
      assert errors[donor] < 1e-5
      assert s > 0 or (donor == i and np.isclose(ratios[donor], 1.0))
      rebuilt += ratios[donor] * candidates[donor]
    np.testing.assert_allclose(batch["mixture"][i], rebuilt, atol=1e-5)
  if target == "reverberant":
    np.testing.assert_allclose(batch["mixture"][..., ref],
                               batch["sources"].sum(1) + batch["noise"], atol=1e-6)
  assert batch["tir_db"].min() >= -5 and batch["tir_db"].max() <= 5


def test_dynamic_mixing_needs_images(tmp_path):
  render.render_dataset(str(tmp_path), {"train": 4}, 4, functools.partial(fake_example),
                        manifest_extra(), "h", num_workers=0, progress=False)
  with pytest.raises(ValueError, match="store_images"):
    loader.make_loader(make_config(dynamic_mixing=True), str(tmp_path), "train", train=True,
                       process_index=0, process_count=1)


@pytest.mark.parametrize("field, value, message", [
    ("sample_rate", 16000, "sample_rate"),
    ("segment_seconds", 1.0, "samples per segment"),
    ("num_sources", 3, "num_sources"),
    ("input_channels", ("L_front", "chin"), "chin"),
    ("reference_mic", "R_tmic", "reference mic"),
    ("target", "dry", "dry"),
    ("target_mics", ("L_tmic", "R_tmic"), "target_mics"),
])
def test_check_manifest_names_the_mismatch(shards_dir, field, value, message):
  manifest = shards.read_manifest(shards_dir)
  loader.check_manifest(make_config(), manifest)
  with pytest.raises(ValueError, match=message):
    loader.check_manifest(make_config(**{field: value}), manifest)


def test_auto_backend_prefers_tfdata_when_importable():
  assert loader.resolve_backend("auto") == "tfdata"
  with pytest.raises(ValueError, match="data.loader"):
    loader.resolve_backend("torch")


def test_float16_hand_over_and_grain_worker_processes_give_the_same_batches(shards_dir):
  reference = take(loader.make_loader(make_config(loader="grain"), shards_dir, "train",
                                      train=True, batch_size=4), 3)
  half = take(loader.make_loader(make_config(loader="grain", host_audio_dtype="float16",
                                             loader_workers=2), shards_dir, "train",
                                 train=True, batch_size=4, start_batch=0), 3)
  for ref, got in zip(reference, half):
    assert got["mixture"].dtype == np.float16 and got["sources"].dtype == np.float16
    assert set(ref) == set(got)
    for key in ref:
      np.testing.assert_array_equal(np.asarray(got[key], ref[key].dtype), ref[key])
      # Evaluation sends copies of these to its metric pool: they must pickle as plain arrays.
      assert type(got[key]) is np.ndarray
      copied = pickle.loads(pickle.dumps(got[key][:1].astype(np.float32)))
      np.testing.assert_array_equal(copied, np.asarray(ref[key][:1], np.float32))


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_half_to_host_is_numpy_cast_for_every_float16(byteorder):
  every = np.arange(2 ** 16, dtype=np.uint16).view(np.float16)
  finite = every[np.isfinite(every)]
  for values in (finite, every, finite[::-3]):  # without and with inf/NaN, strided
    values = values.astype(np.dtype(np.float16).newbyteorder(byteorder))
    out = np.empty(values.shape, np.float32)
    loader.half_to_host(out, values)
    np.testing.assert_array_equal(out.view(np.uint32)[np.isfinite(values)],
                                  values.astype(np.float32).view(np.uint32)[np.isfinite(values)])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(values))
    np.testing.assert_array_equal(out[np.isinf(values)], values[np.isinf(values)])
  half = np.empty(4, np.float16)
  loader.half_to_host(half, finite[:4])  # same dtype: a plain copy
  np.testing.assert_array_equal(half, finite[:4])


def few_speakers_example(split, index):
  """fake_example whose two talkers are distinct speakers out of only 3, so that mixtures of a
  batch share speakers often."""
  record = fake_example(split, index, store_images=True)
  record["speaker_index"] = np.array([index % 3, (index + 1) % 3], np.int32)
  return record


def test_dynamic_mixing_never_pairs_a_speaker_with_themself(tmp_path):
  render.render_dataset(str(tmp_path), {"train": 12}, 12, few_speakers_example,
                        manifest_extra(store_images=True), "h", num_workers=0, progress=False)
  config = make_config(loader="grain", dynamic_mixing=True, input_channels=CHANNELS)
  batches = take(loader.make_loader(config, str(tmp_path), "train", train=True, batch_size=6,
                                    process_index=0, process_count=1), 8)
  remixed = 0
  for k, batch in enumerate(batches):
    ids = loader.batch_example_indices(k, 12, 6, train=True, seed=config.seed)
    own = np.stack([few_speakers_example("train", int(i))["speaker_index"] for i in ids])
    assert np.all(batch["speaker_index"][:, 0] != batch["speaker_index"][:, 1])
    np.testing.assert_array_equal(batch["speaker_index"][:, 0], own[:, 0])  # talker 0 stays
    # talker 1 of another mixture: its reverberant source differs from the slot's own
    for i, example_id in enumerate(ids):
      record = few_speakers_example("train", int(example_id))
      remixed += not np.allclose(batch["sources"][i, 1] / max(np.abs(batch["sources"][i, 1]).max(), 1e-9),
                                 record["reverberant"][1].astype(np.float32)
                                 / np.abs(record["reverberant"][1].astype(np.float32)).max(), atol=1e-3)
  assert remixed > len(batches) * 6 // 2  # most slots do get another mixture's talker


BINAURAL = ("L_tmic", "R_tmic")


@pytest.fixture(scope="module")
def binaural_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("binaural"))
  render.render_dataset(path, {"train": 8, "val": 3}, 3,
                        functools.partial(fake_example, store_images=True, target_mics=BINAURAL),
                        manifest_extra(store_images=True, target_mics=list(BINAURAL)), "hash",
                        num_workers=0, progress=False)
  return path


def test_per_mic_targets_from_both_backends(binaural_dir, shards_dir):
  for directory, mics in ((binaural_dir, BINAURAL), (shards_dir, ())):
    per_backend = []
    for backend in ("tfdata", "grain"):
      config = make_config(loader=backend, target_mics=mics)
      per_backend.append(take(loader.make_loader(config, directory, "train", train=True,
                                                 batch_size=4, process_index=0,
                                                 process_count=1), 2))
    assert_batches_equal(*per_backend)
    batch = per_backend[1][0]
    m_t = len(mics) or 1
    assert batch["targets_direct"].shape == (4, 2, SEGMENT, m_t)
    assert batch["targets_reverberant"].shape == (4, 2, SEGMENT, m_t)
    assert batch["targets_noise"].shape == (4, SEGMENT, m_t)
    assert batch["sources"].shape == (4, 2, SEGMENT) and batch["noise"].shape == (4, SEGMENT)
    channels = [CHANNELS.index(c) for c in (mics or ("L_tmic",))]
    for i, example_id in enumerate(batch["example_id"]):
      record = fake_example("train", int(example_id), store_images=True)
      images = record["images"].astype(np.float32)
      np.testing.assert_array_equal(batch["targets_reverberant"][i], images[:, :, channels])
      np.testing.assert_array_equal(batch["targets_direct"][i],
                                    (0.5 * record["images"][:, :, channels]).astype(np.float16)
                                    .astype(np.float32))
      noise = (record["mixture"].astype(np.float32) - images.sum(0))[:, channels]
      np.testing.assert_allclose(batch["targets_noise"][i], noise, atol=2e-3)
      np.testing.assert_array_equal(batch["sources"][i], record["reverberant"].astype(np.float32))


def test_dynamic_mixing_keeps_per_mic_targets_consistent(binaural_dir):
  config = make_config(loader="grain", dynamic_mixing=True, target_mics=BINAURAL,
                       input_channels=CHANNELS)
  batch = next(loader.make_loader(config, binaural_dir, "train", train=True, batch_size=4,
                                  process_index=0, process_count=1))
  for j, mic in enumerate(BINAURAL):
    channel = CHANNELS.index(mic)
    np.testing.assert_allclose(batch["mixture"][..., channel],
                               batch["targets_reverberant"][..., j].sum(1)
                               + batch["targets_noise"][..., j], atol=1e-5)
  np.testing.assert_allclose(batch["targets_reverberant"][..., 0], batch["sources"], atol=1e-6)
  # The direct targets carry the same gains as the reverberant ones (fake direct = images / 2).
  np.testing.assert_allclose(batch["targets_direct"], 0.5 * batch["targets_reverberant"], atol=1e-3)


@pytest.mark.parametrize("backend", ["tfdata", "grain"])
def test_fewer_train_examples_than_the_batch_is_refused_up_front(shards_dir, backend):
  with pytest.raises(ValueError, match=f"has {NUM_TRAIN} examples, fewer than the training batch "
                                       f"size {NUM_TRAIN + 2}; lower train.batch_size"):
    loader.make_loader(make_config(loader=backend), shards_dir, "train", train=True,
                       batch_size=NUM_TRAIN + 2, process_index=0, process_count=1)
  evaluation = loader.make_loader(make_config(loader=backend), shards_dir, "val", train=False,
                                  batch_size=NUM_VAL + 2, process_index=0, process_count=1)
  assert [len(b["example_id"]) for b in evaluation] == [NUM_VAL]  # one short eval batch is fine


@pytest.mark.parametrize("backend", ["tfdata", "grain"])
def test_damaged_shard_fails_when_the_loader_is_built(tmp_path, backend):
  render.render_dataset(str(tmp_path), {"train": 6}, 3, functools.partial(fake_example),
                        manifest_extra(), "h", num_workers=0, progress=False)
  manifest = shards.read_manifest(str(tmp_path))
  path = tmp_path / manifest["splits"]["train"][1]["file"]
  with open(path, "r+b") as f:
    f.truncate(500)
  with pytest.raises(shards.ShardError, match=f"shard {path} is truncated"):
    loader.make_loader(make_config(loader=backend), str(tmp_path), "train", train=True,
                       batch_size=2, process_index=0, process_count=1)


def test_dynamic_mixing_of_one_talker_keeps_mixture_equal_to_talker_plus_noise(tmp_path):
  render.render_dataset(str(tmp_path), {"train": 6}, 3,
                        functools.partial(fake_example, num_sources=1, store_images=True),
                        manifest_extra(store_images=True, num_sources=1), "h", num_workers=0,
                        progress=False)
  config = make_config(loader="grain", dynamic_mixing=True, num_sources=1)
  batch = take(loader.make_loader(config, str(tmp_path), "train", train=True, batch_size=3,
                                  process_index=0, process_count=1), 1)[0]
  assert batch["sources"].shape == (3, 1, SEGMENT)
  assert np.all(np.isinf(batch["tir_db"])) and np.all(np.isnan(batch["separation_deg"]))
  reference = batch["mixture"][..., config.data.input_channels.index("L_tmic")]
  np.testing.assert_allclose(reference, batch["sources"][:, 0] + batch["noise"], atol=2e-3)
