"""Scene sampling into example records."""

import numpy as np
import pytest
import soundfile

from spatialsep_jax.configs import base
from data_pipeline import rooms, scenes

SPEAKERS = ((3, 0, 210.0), (7, 1, 110.0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = base.get_base_config("smoke")
  data = config.data
  data.rir_length_seconds = 0.1
  data.num_rooms = 3
  data.azimuth_step_deg = 45.0
  data.room_size_min = (3.0, 3.0, 2.5)
  data.room_size_max = (4.0, 4.0, 3.0)
  data.cache_dir = str(tmp_path_factory.mktemp("cache"))
  data.input_channels = ("L_tmic", "R_tmic")
  bank = rooms.build_rir_bank(config, num_workers=1, progress=False)
  rng = np.random.default_rng(0)
  utterances = (rng.standard_normal(12000).astype(np.float32),
                rng.standard_normal(5000).astype(np.float32))
  return config, bank, utterances


def example(setup, seed, split, index, example_id=None, **kwargs):
  """make_example for example `index` of `split` (the scene generator of (seed, split, index))."""
  config, bank, utterances = setup
  return scenes.make_example(config, kwargs.pop("utterances", utterances), SPEAKERS, bank,
                             scenes.scene_seed(seed, split, index),
                             index if example_id is None else example_id, split=split, **kwargs)


def test_record_keys_shapes_dtypes(setup):
  config, bank, utterances = setup
  config.data.store_images = True
  record = example(setup, 1, "train", 0, example_id=5)
  config.data.store_images = False
  t = 8000
  expected = dict(mixture=((t, 6), np.float16), reverberant=((2, t), np.float16),
                  direct=((2, t), np.float16), noise=((t,), np.float16),
                  images=((2, t, 6), np.float16), azimuth_deg=((2,), np.float32),
                  distance_m=((2,), np.float32), separation_deg=((), np.float32),
                  room_dims=((3,), np.float32), rt60=((), np.float32), drr_db=((2,), np.float32),
                  tir_db=((), np.float32), snr_db=((), np.float32),
                  speaker_index=((2,), np.int32), speaker_sex=((2,), np.int32),
                  f0_hz=((2,), np.float32), example_id=((), np.int64),
                  room_index=((), np.int32))
  assert set(record) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert np.shape(record[key]) == shape and np.asarray(record[key]).dtype == dtype, key
  assert record["azimuth_deg"][0] != record["azimuth_deg"][1]
  difference = abs(record["azimuth_deg"][0] - record["azimuth_deg"][1]) % 360
  assert record["separation_deg"] == min(difference, 360 - difference)
  np.testing.assert_allclose(np.abs(record["mixture"].astype(np.float32)).max(), 0.9, rtol=1e-3)
  reference = record["images"][:, :, 2].astype(np.float32)
  np.testing.assert_allclose(reference, record["reverberant"].astype(np.float32), atol=1e-3)
  np.testing.assert_allclose(record["images"].astype(np.float32).sum(0),
                             record["mixture"].astype(np.float32), atol=3e-3)
  levels = [np.sqrt(np.mean(reference[s] ** 2)) for s in range(2)]
  np.testing.assert_allclose(20 * np.log10(levels[0] / levels[1]), record["tir_db"], atol=0.05)
  assert record["snr_db"] == np.inf and not np.any(record["noise"])
  assert record["example_id"] == 5 and list(record["speaker_sex"]) == [0, 1]


def test_deterministic_for_seed(setup):
  config, bank, utterances = setup
  first = example(setup, 4, "val", 3)
  second = example(setup, 4, "val", 3)
  other = example(setup, 4, "val", 4)
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])
  assert not np.array_equal(first["mixture"], other["mixture"])


def test_crop_or_pad():
  rng = np.random.default_rng(0)
  short = np.arange(1, 4, dtype=np.float32)
  padded = {tuple(scenes.crop_or_pad(short, 5, rng)) for _ in range(20)}
  assert padded == {(0, 0, 1, 2, 3), (1, 2, 3, 0, 0)}
  long = np.arange(10, dtype=np.float32)
  cropped = scenes.crop_or_pad(long, 4, rng)
  np.testing.assert_array_equal(cropped, np.arange(cropped[0], cropped[0] + 4))


def test_noise_file_with_nan_is_named(setup, tmp_path):
  config, _, _ = setup
  noise = np.random.default_rng(3).standard_normal(3000) * 0.1
  noise[7] = np.inf
  soundfile.write(tmp_path / "hum.wav", noise, 8000, subtype="FLOAT")
  config.data.noise = str(tmp_path)
  try:
    with pytest.raises(ValueError, match="hum.wav: noise file with NaN/inf"):
      example(setup, 0, "test", 1)
  finally:
    config.data.noise = "none"


@pytest.mark.parametrize("noise", ["diffuse", "folder"])
def test_noise_at_snr(setup, noise, tmp_path):
  config, bank, utterances = setup
  if noise == "folder":
    soundfile.write(tmp_path / "hum.wav", np.random.default_rng(3).standard_normal(3000) * 0.1, 16000)
    noise = str(tmp_path)
  config.data.noise = noise
  try:
    record = example(setup, 0, "test", 1)
  finally:
    config.data.noise = "none"
  speech = record["mixture"][:, 2].astype(np.float32) - record["noise"].astype(np.float32)
  noise_ref = record["noise"].astype(np.float32)
  snr = 10 * np.log10(np.mean(speech ** 2) / np.mean(noise_ref ** 2))
  assert abs(snr - record["snr_db"]) < 0.1
  assert 0 <= record["snr_db"] <= 15


def test_channel_not_in_bank(setup):
  config, bank, utterances = setup
  config.data.reference_mic = "L_canal"
  try:
    with pytest.raises(ValueError, match="not in the array"):
      example(setup, 0, "train", 0)
  finally:
    config.data.reference_mic = "L_tmic"


def test_split_rooms_partition():
  partition = scenes.split_rooms(64, (0.75, 0.125, 0.125), seed=1)
  assert [len(partition[s]) for s in scenes.SPLITS] == [48, 8, 8]
  np.testing.assert_array_equal(np.sort(np.concatenate(list(partition.values()))), np.arange(64))
  again = scenes.split_rooms(64, (0.75, 0.125, 0.125), seed=1)
  assert all(np.array_equal(partition[s], again[s]) for s in scenes.SPLITS)
  assert [len(v) for v in scenes.split_rooms(3, (0.75, 0.125, 0.125), 0).values()] == [1, 1, 1]
  with pytest.raises(ValueError, match="at least 3.*share_rooms_across_splits=True"):
    scenes.split_rooms(2, (0.75, 0.125, 0.125), 0)
  with pytest.raises(ValueError, match="no training room"):
    scenes.split_rooms(4, (0.1, 0.5, 0.5), 0)
  with pytest.raises(ValueError, match="room_split"):
    scenes.split_rooms(8, (1.0, 0.0, 0.0), 0)


def test_no_room_or_response_in_two_splits(setup):
  config, bank, _ = setup
  # A response is identified by its samples (not by room_index), so this also holds if the
  # record's room_index were wrong.
  def responses(split, share):
    config.data.share_rooms_across_splits = share
    try:
      records = [example(setup, 0, split, i) for i in range(12)]
    finally:
      config.data.share_rooms_across_splits = False
    used = set()
    for record in records:
      room = int(record["room_index"])
      assert np.isclose(bank.rt60[room], record["rt60"])
      for azimuth in record["azimuth_deg"]:
        a = int(np.flatnonzero(bank.azimuths_deg == azimuth)[0])
        used.add((room, bank.reverberant[room, a].tobytes()))
    return used
  disjoint = {split: responses(split, False) for split in scenes.SPLITS}
  for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
    assert not {r for r, _ in disjoint[first]} & {r for r, _ in disjoint[second]}
    assert not {b for _, b in disjoint[first]} & {b for _, b in disjoint[second]}
  shared = {split: {r for r, _ in responses(split, True)} for split in scenes.SPLITS}
  assert len(set.union(*shared.values())) == bank.num_rooms  # the ablation draws from every room
  assert shared["train"] & shared["test"]


def test_crop_active_draws_only_crops_above_the_threshold():
  rate, segment = 8000, 8000
  rng = np.random.default_rng(0)
  utterance = 1e-4 * rng.standard_normal(3 * rate)                  # a -80 dBFS floor
  utterance[12000:14000] += 0.3 * rng.standard_normal(2000)         # 0.25 s of "speech"
  utterance = utterance.astype(np.float32)
  # Reference by brute force: the level of every crop position against the burst's power.
  powers = np.array([np.mean(utterance[start:start + segment].astype(np.float64) ** 2)
                     for start in range(utterance.size - segment + 1)])
  allowed = set(np.flatnonzero(10 * np.log10(powers / np.mean(utterance[12000:14000] ** 2.0)) >= -15))
  starts = set()
  for _ in range(200):
    crop = scenes.crop_active(utterance, segment, rng, -15.0, rate)
    start = int(np.flatnonzero(utterance == crop[0])[0])            # the floor is unique noise
    np.testing.assert_array_equal(crop, utterance[start:start + segment])
    assert start in allowed
    starts.add(start)
  assert len(starts) > 100 and min(starts) < 6000 and max(starts) > 12000  # spread over them
  short = 0.3 * rng.standard_normal(400).astype(np.float32)          # -13 dB of the segment
  assert scenes.crop_active(short, segment, rng, -15.0, rate).shape == (segment,)
  with pytest.raises(scenes.QuietCrop, match="min_crop_level_db"):
    scenes.crop_active(short, segment, rng, -10.0, rate)
  with pytest.raises(scenes.QuietCrop):
    scenes.crop_active(np.zeros(9000, np.float32), segment, rng, -np.inf, rate)


def test_quiet_utterance_is_refused_not_amplified(setup):
  config, bank, utterances = setup
  tiny = np.zeros(8000, np.float32)
  tiny[:40] = 0.5                                                    # 5 ms in a 1-s segment
  with pytest.raises(scenes.QuietCrop, match="utterance 1"):
    example(setup, 0, "train", 0, utterances=(utterances[0], tiny))
  config.data.segment_seconds = 0.0
  try:
    with pytest.raises(ValueError, match="segment_seconds"):
      example(setup, 0, "train", 0)
  finally:
    config.data.segment_seconds = 1.0


def test_targets_at_every_target_mic(setup):
  config, bank, _ = setup
  config.data.update(target_mics=("L_tmic", "R_tmic"), store_images=True, noise="diffuse")
  try:
    record = example(setup, 2, "test", 0)
  finally:
    config.data.update(target_mics=(), store_images=False, noise="none")
  t = 8000
  for key, shape in (("reverberant_targets", (2, t, 2)), ("direct_targets", (2, t, 2)),
                     ("noise_targets", (t, 2))):
    assert record[key].shape == shape and record[key].dtype == np.float16, key
  f32 = lambda key: record[key].astype(np.float32)
  np.testing.assert_array_equal(f32("reverberant_targets")[..., 0], f32("reverberant"))
  np.testing.assert_array_equal(f32("reverberant_targets"), f32("images")[..., [2, 5]])
  np.testing.assert_array_equal(f32("direct_targets")[..., 0], f32("direct"))
  np.testing.assert_array_equal(f32("noise_targets")[:, 0], f32("noise"))
  assert np.any(record["noise_targets"][:, 1] != record["noise_targets"][:, 0])
  # Both ears' direct paths are one dry crop through the left / right responses, so (by
  # commutativity) left * h_right == right * h_left over the segment.
  room = int(record["room_index"])
  for s in range(2):
    a = int(np.flatnonzero(bank.azimuths_deg == record["azimuth_deg"][s])[0])
    left, right = f32("direct_targets")[s, :, 0], f32("direct_targets")[s, :, 1]
    h_left, h_right = bank.direct[room, a, :, 2], bank.direct[room, a, :, 5]
    one = np.convolve(left, h_right)[:t]
    other = np.convolve(right, h_left)[:t]
    assert np.max(np.abs(one - other)) < 2e-3 * np.max(np.abs(one))
