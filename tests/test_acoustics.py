"""Head shadow, head-filtered image-source RIRs, the RIR bank cache and measured responses."""

import json
import os

import numpy as np
import pytest
import soundfile
from scipy import signal

from spatialsep_jax.configs import base
from data_pipeline import array, head, measured, rooms


def _tiny_config(tmp_path, **overrides):
  config = base.get_base_config("smoke")
  data = config.data
  data.sample_rate = 8000
  data.rir_length_seconds = 0.1
  data.num_rooms = 2
  data.azimuth_step_deg = 90.0
  data.room_size_min = (3.0, 3.0, 2.5)
  data.room_size_max = (4.0, 4.0, 3.0)
  data.rt60_range = (0.15, 0.2)
  data.cache_dir = str(tmp_path)
  for key, value in overrides.items():
    setattr(data, key, value)
  return config


def _itd_ms(left, right, sample_rate, upsample=16):
  left_up = signal.resample(left, left.size * upsample)
  right_up = signal.resample(right, right.size * upsample)
  correlation = signal.correlate(right_up, left_up, "full")
  return (np.argmax(correlation) - (left_up.size - 1)) / (sample_rate * upsample) * 1e3


def test_head_shadow_lateral_and_frontal():
  sample_rate, n = 16000, 512
  tmics = array.channel_indices(("L_tmic", "R_tmic"))
  lateral = head.anechoic_head_rirs(90.0, sample_rate, n, array.MIC_DIRECTIONS, delay_samples=64)
  spectra = np.fft.rfft(lateral[:, tmics], axis=0)
  bin_4k = int(4000 * n / sample_rate)
  ild_db = 20 * np.log10(np.abs(spectra[bin_4k, 0]) / np.abs(spectra[bin_4k, 1]))
  assert ild_db >= 10.0
  assert 0.6 <= _itd_ms(*lateral[:, tmics].T, sample_rate) <= 0.8
  frontal = head.anechoic_head_rirs(0.0, sample_rate, n, array.MIC_DIRECTIONS, delay_samples=64)
  spectra = np.fft.rfft(frontal[:, tmics], axis=0)
  assert abs(20 * np.log10(np.abs(spectra[bin_4k, 0]) / np.abs(spectra[bin_4k, 1]))) < 0.1
  assert abs(_itd_ms(*frontal[:, tmics].T, sample_rate)) < 0.01


def test_sphere_hrtf_limits():
  # DC is the free field; the facing point at high ka approaches pressure doubling.
  response = head.sphere_hrtf([0.0, 20.0, 20000.0], [1.0, -1.0])
  np.testing.assert_allclose(response[0], 1.0)
  np.testing.assert_allclose(np.abs(response[1]), 1.0, atol=0.01)
  assert 1.8 < abs(response[2, 0]) < 2.2
  # Low-frequency arrival at the facing point leads the centre by 1.5 a / c (Kuhn).
  lead = np.angle(head.sphere_hrtf([50.0], [1.0])[0, 0]) / (2 * np.pi * 50.0)
  np.testing.assert_allclose(lead, 1.5 * array.HEAD_RADIUS_M / head.SPEED_OF_SOUND, rtol=0.02)


def test_channel_not_in_array():
  assert array.channel_indices(("R_tmic", "L_back")) == [5, 1]
  with pytest.raises(ValueError, match="L_front"):
    array.channel_indices("L_middle")


def _single_image_rirs(distance, azimuth_deg, sample_rate=8000, length=400):
  head_position = np.array([0.0, 0.0, 0.0])
  source = distance * array.unit_vectors(azimuth_deg)
  return rooms.render_head_rirs(source[None], np.ones(1), np.zeros(1, int), head_position, 0.0,
                                sample_rate, length)


def test_direct_path_delay_matches_distance():
  sample_rate = 8000
  for distance in (1.0, 1.37, 2.5):
    reverberant, direct = _single_image_rirs(distance, 0.0, sample_rate)
    np.testing.assert_array_equal(reverberant, direct)
    # The T-mics of a frontal talker receive the wave when it passes the head centre.
    tmic = direct[:, array.channel_indices("L_tmic")[0]]
    upsampled = signal.resample(tmic, tmic.size * 32)
    delay = np.argmax(np.abs(upsampled)) / 32
    assert abs(delay - distance / head.SPEED_OF_SOUND * sample_rate) < 1.0
    np.testing.assert_allclose(np.sum(tmic), 1 / (4 * np.pi * distance), rtol=0.05)


def test_render_matches_brute_force_spectrum():
  # Late images (order > EARLY_MAX_ORDER) use binned impulse trains; compare with the exact sum.
  rng = np.random.default_rng(0)
  sample_rate, length = 8000, 800
  positions = rng.uniform(-10, 10, size=(40, 3))
  gains, orders = rng.uniform(0.2, 1.0, 40), np.full(40, 5)
  reverberant, _ = rooms.render_head_rirs(positions, gains, orders, np.zeros(3), 0.3,
                                          sample_rate, length)
  yaw = np.array([[np.cos(0.3), np.sin(0.3), 0], [-np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
  distances = np.linalg.norm(positions, axis=1)
  frequencies = np.fft.rfftfreq(length, 1 / sample_rate)
  expected = np.zeros((frequencies.size, 6), complex)
  for position, gain, distance in zip(positions, gains, distances):
    if distance / head.SPEED_OF_SOUND * sample_rate >= length - 1:
      continue
    cosines = array.MIC_DIRECTIONS @ (yaw @ (position / distance))
    expected += (gain / (4 * np.pi * distance) * head.sphere_hrtf(frequencies, cosines)
                 * np.exp(-2j * np.pi * frequencies * distance / head.SPEED_OF_SOUND)[:, None])
  band = frequencies < 2000  # sample-rounded delays are within 0.5 sample: exact at low frequency
  actual = np.fft.rfft(reverberant, axis=0)
  error = np.linalg.norm(actual[band] - expected[band]) / np.linalg.norm(expected[band])
  assert error < 0.25


def test_reverberant_energy_grows_with_rt60():
  azimuths = np.array([0.0, 90.0])
  energies = []
  for rt60 in (0.2, 0.5):
    room = rooms.simulate_room(0, 3, 8000, 2400, (5, 4, 3), (5, 4, 3), (rt60, rt60), (1.5, 1.5),
                               azimuths)
    late = room["reverberant"] - room["direct"]
    energies.append(np.sum(late ** 2))
    assert room["reverberant"].shape == (2, 2400, 6)
  assert energies[1] > 2 * energies[0]


def test_rir_bank_cache_hit(tmp_path):
  config = _tiny_config(tmp_path)
  first = rooms.build_rir_bank(config, num_workers=1, progress=False)
  assert first.reverberant.shape == (2, 4, 800, 6)
  assert first.available.all() and np.all(np.isfinite(first.drr_db))
  assert np.all((first.distance_m > 0.1) & (first.distance_m <= 2.0))
  again = rooms.build_rir_bank(config, num_workers=1, progress=False)
  for name in ("reverberant", "direct", "drr_db", "rt60", "room_dims", "distance_m"):
    np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
  other = rooms.bank_key(_tiny_config(tmp_path, num_rooms=3))
  assert other != rooms.bank_key(config)


def _write_brirs(folder, sample_rate, channels=6, length=200):
  rng = np.random.default_rng(1)
  written = {}
  for room in ("lab", "hall"):
    for azimuth in (-90, 0, 90):
      brir = rng.standard_normal((length, channels)).astype(np.float32) * 0.01
      brir[10 + azimuth // 30 + 3] += 0.8
      soundfile.write(folder / f"{room}_az{azimuth}.wav", brir, sample_rate, subtype="FLOAT")
      written[room, azimuth] = brir
  return written


def test_measured_folder_round_trip(tmp_path):
  written = _write_brirs(tmp_path, 8000)
  anechoic = np.zeros((50, 6), np.float32)
  anechoic[5] = 1.0
  soundfile.write(tmp_path / "anechoic_az0.wav", anechoic, 8000, subtype="FLOAT")
  bank = measured.load_measured_bank(tmp_path, 8000, 0.05)
  np.testing.assert_array_equal(bank.azimuths_deg, [-90, 0, 90])
  assert bank.reverberant.shape == (2, 3, 400, 6) and bank.available.all()
  hall = 0  # rooms are sorted by name
  np.testing.assert_allclose(bank.reverberant[hall, 2, :200], written["hall", 90], atol=1e-7)
  np.testing.assert_array_equal(bank.reverberant[hall, 2, 200:], 0.0)
  np.testing.assert_array_equal(bank.direct[1, 1, :50], anechoic)
  assert np.all(bank.drr_db > 5)


def test_measured_channel_subset_and_errors(tmp_path):
  _write_brirs(tmp_path, 16000, channels=2)
  with pytest.raises(ValueError, match="json sidecar"):
    measured.load_measured_bank(tmp_path, 8000, 0.02)
  (tmp_path / "channels.json").write_text(json.dumps({"channels": ["L_tmic", "R_tmic"]}))
  bank = measured.load_measured_bank(tmp_path, 8000, 0.02)
  assert bank.channel_names == ("L_tmic", "R_tmic") and bank.reverberant.shape[2] == 160
  assert not np.any(bank.reverberant[..., 0])
  with pytest.raises(ValueError, match="does not exist"):
    measured.load_measured_bank(tmp_path / "missing", 8000, 0.02)


def test_measured_sample_rate_mismatch(tmp_path):
  _write_brirs(tmp_path, 8001)
  with pytest.raises(ValueError, match="resample the file to 8000 Hz"):
    measured.load_measured_bank(tmp_path, 8000, 0.02)


def test_sofa_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  impulses = rng.standard_normal((4, 6, 96)).astype(np.float32)
  positions = np.array([[0, 0, 1.5], [90, 0, 1.5], [90, 30, 1.5], [-45, 0, 1.5]], float)
  path = tmp_path / "studio.sofa"
  import sofar
  sofa = sofar.Sofa("GeneralFIR", mandatory=True)  # any receiver count, spherical positions
  sofa.Data_IR, sofa.SourcePosition, sofa.Data_SamplingRate = impulses, positions, 16000.0
  sofa.Data_Delay = np.zeros((1, 6))
  sofar.write_sofa(str(path), sofa)
  bank = measured.load_measured_bank(path, 8000, 0.01)
  np.testing.assert_array_equal(bank.azimuths_deg, [-45, 0, 90])
  expected = signal.resample_poly(impulses[1].T, 1, 2, axis=0)[:80]
  np.testing.assert_allclose(bank.reverberant[0, 2, :48], expected[:48], atol=1e-5)
  np.testing.assert_allclose(bank.distance_m, 1.5)


def test_measured_rooms_are_split_and_one_room_needs_the_share_option(tmp_path):
  from spatialsep_jax.configs import base
  from data_pipeline import scenes
  _write_brirs(tmp_path, 8000)
  soundfile.write(tmp_path / "office_az0.wav", np.eye(200, 6, dtype=np.float32), 8000,
                  subtype="FLOAT")
  soundfile.write(tmp_path / "office_az90.wav", np.eye(200, 6, k=-3, dtype=np.float32), 8000,
                  subtype="FLOAT")
  config = base.get_base_config("smoke")
  config.data.update(scene="measured", measured_dir=str(tmp_path), rir_length_seconds=0.025,
                     segment_seconds=0.05)
  bank = scenes.load_bank(config)
  assert bank.num_rooms == 3  # hall, lab, office
  speech = tuple(np.random.default_rng(s).standard_normal(800).astype(np.float32) for s in (0, 1))
  speakers = ((0, 0, 200.0), (1, 1, 100.0))

  def rooms_used(split):
    return {int(scenes.make_example(config, speech, speakers, bank,
                                    scenes.scene_seed(0, split, i), i, split=split)["room_index"])
            for i in range(6)}
  used = {split: rooms_used(split) for split in scenes.SPLITS}
  assert [len(rooms) for rooms in used.values()] == [1, 1, 1]
  assert set.union(*used.values()) == {0, 1, 2}

  one_room = tmp_path / "one"
  one_room.mkdir()
  for azimuth in (0, 90):
    os.replace(tmp_path / f"office_az{azimuth}.wav", one_room / f"office_az{azimuth}.wav")
  config.data.measured_dir = str(one_room)
  bank = scenes.load_bank(config)
  with pytest.raises(ValueError, match="1 room.*at least 3.*share_rooms_across_splits=True"):
    rooms_used("test")
  config.data.share_rooms_across_splits = True
  assert rooms_used("test") == {0}


def test_measured_response_with_nan_is_named(tmp_path):
  _write_brirs(tmp_path, 8000)
  brir = np.zeros((100, 6), np.float32)
  brir[3, 2] = np.nan
  soundfile.write(tmp_path / "lab_az45.wav", brir, 8000, subtype="FLOAT")
  with pytest.raises(ValueError, match="lab_az45.wav: response with NaN/inf"):
    measured.load_measured_bank(tmp_path, 8000, 0.02)
