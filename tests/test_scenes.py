"""Scene sampling into example records."""

import numpy as np
import pytest
import soundfile

from configs import base
from data_pipeline import rooms, scenes

SPEAKERS = ((3, 0, 210.0), (7, 1, 110.0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = base.get_base_config("smoke")
  data = config.data
  data.rir_length_seconds = 0.1
  data.num_rooms = 2
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


def test_record_keys_shapes_dtypes(setup):
  config, bank, utterances = setup
  config.data.store_images = True
  record = scenes.make_example(config, utterances, SPEAKERS, bank, scenes.scene_seed(1, "train", 0), 5)
  config.data.store_images = False
  t = 8000
  expected = dict(mixture=((t, 6), np.float16), reverberant=((2, t), np.float16),
                  direct=((2, t), np.float16), noise=((t,), np.float16),
                  images=((2, t, 6), np.float16), azimuth_deg=((2,), np.float32),
                  distance_m=((2,), np.float32), separation_deg=((), np.float32),
                  room_dims=((3,), np.float32), rt60=((), np.float32), drr_db=((2,), np.float32),
                  tir_db=((), np.float32), snr_db=((), np.float32),
                  speaker_index=((2,), np.int32), speaker_sex=((2,), np.int32),
                  f0_hz=((2,), np.float32), example_id=((), np.int64))
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
  first = scenes.make_example(config, utterances, SPEAKERS, bank, scenes.scene_seed(4, "val", 3), 3)
  second = scenes.make_example(config, utterances, SPEAKERS, bank, scenes.scene_seed(4, "val", 3), 3)
  other = scenes.make_example(config, utterances, SPEAKERS, bank, scenes.scene_seed(4, "val", 4), 4)
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


@pytest.mark.parametrize("noise", ["diffuse", "folder"])
def test_noise_at_snr(setup, noise, tmp_path):
  config, bank, utterances = setup
  if noise == "folder":
    soundfile.write(tmp_path / "hum.wav", np.random.default_rng(3).standard_normal(3000) * 0.1, 16000)
    noise = str(tmp_path)
  config.data.noise = noise
  try:
    record = scenes.make_example(config, utterances, SPEAKERS, bank, scenes.scene_seed(0, "test", 1), 1)
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
      scenes.make_example(config, utterances, SPEAKERS, bank, scenes.scene_seed(0, "train", 0), 0)
  finally:
    config.data.reference_mic = "L_tmic"
