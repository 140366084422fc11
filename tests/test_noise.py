"""Noise of spatial scenes (data_pipeline/noise.py through scenes.make_example and the render):
levels, spectra, babble speakers, non-stationarity, spatial coherence, 1 talker, 16 kHz."""

import json

import numpy as np
import pytest
from scipy import signal

from data_pipeline import corpus as corpus_lib
from data_pipeline import dataset, noise, rooms, scenes, shards, summarize
from spatialsep_jax.configs import base

SPEAKERS = ((3, 0, 210.0), (7, 1, 110.0))
REFERENCE = 2                                     # L_tmic
LEFT, RIGHT = 2, 5                                # the T-mics


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = base.get_base_config("smoke")
  data = config.data
  data.rir_length_seconds = 0.1
  data.azimuth_step_deg = 30.0                    # 12 azimuths: 8 for diffuse noise, more apart
  data.room_size_min = (3.0, 3.0, 2.5)
  data.room_size_max = (4.0, 4.0, 3.0)
  data.cache_dir = str(tmp_path_factory.mktemp("cache"))
  data.store_images = True
  bank = rooms.build_rir_bank(config, num_workers=1, progress=False)
  rng = np.random.default_rng(0)
  utterances = tuple(rng.standard_normal(12000).astype(np.float32) for _ in range(2))
  babble = noise.BabblePool.from_arrays(
      {f"b{k}": [speechlike(rng, 12000) for _ in range(2)] for k in range(4)})
  return config, bank, utterances, babble


def speechlike(rng, num_samples, rate=8000):
  """Noise bursts gated at a syllabic rate: a stand-in utterance with pauses."""
  t = np.arange(num_samples) / rate
  gate = (np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)) > 0).astype(np.float32)
  return (0.3 * rng.standard_normal(num_samples) * gate).astype(np.float32)


def make(setup, kind, index=0, split="test", **data):
  config, bank, utterances, babble = setup
  previous = {key: config.data[key] for key in data}
  config.data.update(noise=kind, **data)
  try:
    num = config.data.num_sources
    return scenes.make_example(config, utterances[:num], SPEAKERS[:num], bank,
                               scenes.scene_seed(7, split, index), index, split=split,
                               babble=babble)
  finally:
    config.data.update(noise="none", **previous)


def f32(record, key):
  return record[key].astype(np.float32)


def frame_log_energy(x, frame=160):
  frames = x[:x.size // frame * frame].reshape(-1, frame)
  return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)


def coherence(left, right, nperseg=256):
  """Magnitude-squared coherence per frequency from Welch cross-spectra, in numpy."""
  window = np.hanning(nperseg)
  starts = range(0, left.size - nperseg + 1, nperseg // 2)
  spectra_l = np.stack([np.fft.rfft(window * left[s:s + nperseg]) for s in starts])
  spectra_r = np.stack([np.fft.rfft(window * right[s:s + nperseg]) for s in starts])
  cross = np.mean(spectra_l * np.conj(spectra_r), axis=0)
  power_l = np.mean(np.abs(spectra_l) ** 2, axis=0)
  power_r = np.mean(np.abs(spectra_r) ** 2, axis=0)
  return np.abs(cross) ** 2 / (power_l * power_r)


@pytest.mark.parametrize("kind", ["diffuse", "babble", "nonstationary", "mixed"])
def test_noise_level_is_the_drawn_snr_at_the_reference_mic(setup, kind):
  record = make(setup, kind, index=3)
  speech = f32(record, "reverberant").sum(axis=0)
  stem = f32(record, "noise")
  residual = f32(record, "mixture")[:, REFERENCE] - speech - stem
  assert np.max(np.abs(residual)) < 2e-3
  measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(stem.astype(np.float64) ** 2))
  assert abs(measured - float(record["snr_db"])) < 0.05
  assert 0.0 <= record["snr_db"] <= 15.0
  names = noise.NOISE_KINDS
  assert names[int(record["noise_kind"])] in (noise.MIXABLE_KINDS if kind == "mixed" else (kind,))
  other_ear = f32(record, "mixture")[:, RIGHT] - f32(record, "images")[:, :, RIGHT].sum(axis=0)
  assert np.sqrt(np.mean(other_ear ** 2)) > 0.1 * np.sqrt(np.mean(stem ** 2))  # noise at both ears


def test_mixed_draws_every_kind_and_snr_range_is_kept(setup):
  kinds = [int(make(setup, "mixed", index=i, snr_db_range=(-6.0, 3.0))["noise_kind"])
           for i in range(12)]
  assert set(kinds) == {noise.kind_index(k) for k in noise.MIXABLE_KINDS}
  snrs = [float(make(setup, "babble", index=i, snr_db_range=(-6.0, 3.0))["snr_db"])
          for i in range(4)]
  assert all(-6.0 <= s <= 3.0 for s in snrs)


def test_pink_noise_falls_3_db_per_octave():
  rate = 8000
  pink = noise.pink_noise(4, 4 * rate, np.random.default_rng(1), rate)
  np.testing.assert_allclose(np.sqrt(np.mean(pink ** 2, axis=1)), 1.0, rtol=1e-5)
  frequencies, psd = signal.welch(pink, rate, nperseg=1024, axis=1)
  band = (frequencies >= 50) & (frequencies <= 3500)
  slope = np.polyfit(np.log10(frequencies[band]), 10 * np.log10(psd.mean(axis=0)[band]), 1)[0]
  assert -10.5 < slope < -9.5                     # -10 dB/decade = -3.01 dB/octave (1/f)


def test_rendered_diffuse_noise_is_pink_not_white(setup):
  config, bank, _, _ = setup
  stem = f32(make(setup, "diffuse", index=1), "noise")
  frequencies, psd = signal.welch(stem, 8000, nperseg=512)
  low = psd[(frequencies >= 100) & (frequencies < 400)].mean()
  high = psd[(frequencies >= 1600) & (frequencies < 3200)].mean()
  # Pink: the 1.6-3.2 kHz octave pair holds 1/8 of the 0.1-0.4 kHz pair's power density
  # (-9 dB); white noise would be level. Head shadow and room colour move it a few dB.
  assert -15.0 < 10 * np.log10(high / low) < -4.0


def test_diffuse_directions_are_spread_around_the_head(setup):
  _, bank, _, _ = setup
  chosen = noise.even_azimuths(bank.available[0], bank.azimuths_deg, 8, np.random.default_rng(2))
  angles = np.sort(bank.azimuths_deg[chosen])
  assert len(set(chosen.tolist())) == 8
  gaps = np.diff(np.concatenate([angles, angles[:1] + 360.0]))
  assert gaps.max() <= 90.0                       # 8 of 12 grid azimuths, no side left empty


def test_diffuse_noise_is_less_coherent_between_the_ears_than_a_point_source(setup):
  _, bank, _, _ = setup
  rng = np.random.default_rng(3)
  num_samples, room = 3 * 8000, 1
  frequencies = np.fft.rfftfreq(256, 1 / 8000)
  band = (frequencies >= 300) & (frequencies <= 2000)
  diffuse = noise.diffuse(bank, room, num_samples, 8000, rng)
  diffuse_coherence = coherence(diffuse[:, LEFT], diffuse[:, RIGHT])[band].mean()
  point_coherence = []
  for azimuth in range(len(bank.azimuths_deg)):   # a point source at every grid azimuth
    point = noise.spatialise(noise.pink_noise(1, num_samples + bank.rir_length, rng, 8000),
                             np.asarray(bank.reverberant[room, [azimuth]]), num_samples)
    point_coherence.append(coherence(point[:, LEFT], point[:, RIGHT])[band].mean())
  assert diffuse_coherence < 0.7 * min(point_coherence), (diffuse_coherence, point_coherence)


def test_nonstationary_noise_has_a_more_variable_envelope(setup):
  variances = {kind: [np.var(frame_log_energy(f32(make(setup, kind, index=i), "noise")))
                      for i in range(3)] for kind in ("diffuse", "nonstationary")}
  # Frame energies of stationary noise vary by ~1 dB^2 (20-ms frames); modulation and bursts
  # add tens.
  assert min(variances["nonstationary"]) > 3 * max(variances["diffuse"]), variances


def test_point_noise_sources_avoid_the_talkers_positions(setup):
  import dataclasses
  _, bank, _, _ = setup
  talkers = (3, 7)
  # Responses only at the talkers' azimuths: noise from anywhere else is silent.
  only_talkers = np.zeros_like(np.asarray(bank.reverberant))
  only_talkers[:, list(talkers)] = bank.reverberant[:, list(talkers)]
  masked = dataclasses.replace(bank, reverberant=only_talkers)
  rng = np.random.default_rng(0)
  dry = rng.standard_normal((6, 8000 + bank.rir_length))
  assert not np.any(noise.babble(dry, masked, 0, 8000, rng, talkers))
  assert not np.any(noise.nonstationary(masked, 0, 8000, 8000, rng, talkers))
  assert np.any(noise.babble(dry, masked, 0, 8000, np.random.default_rng(1)))  # without: used
  np.testing.assert_array_equal(noise.point_source_azimuths(np.ones(3, bool), (0, 1)), [0, 1, 2])


def test_babble_is_the_pool_speakers_from_several_directions(setup):
  config, bank, _, _ = setup
  waveforms = {f"b{k}": [speechlike(np.random.default_rng(k), 12000)] for k in range(6)}
  drawn = noise.BabblePool.from_arrays(waveforms).draw(np.random.default_rng(0), 6)
  assert len(drawn) == 6 and all(any(np.array_equal(w, v[0]) for v in waveforms.values())
                                 for w in drawn)
  assert len({w.tobytes() for w in drawn}) == 6                 # six different talkers
  few = noise.BabblePool.from_arrays({"a": [np.ones(3)], "b": [np.zeros(3)]})
  assert len(few.draw(np.random.default_rng(0), 5)) == 5        # speakers repeat when too few
  with pytest.raises(noise.NoiseConfigError, match="babble pool is empty"):
    noise.BabblePool.from_arrays({})


def test_babble_without_a_pool_and_bad_mixed_kinds_are_one_line(setup):
  config, bank, utterances, _ = setup
  config.data.noise = "babble"
  try:
    with pytest.raises(ValueError, match="needs babble utterances"):
      scenes.make_example(config, utterances, SPEAKERS, bank, scenes.scene_seed(0, "train", 0), 0,
                          split="train")
  finally:
    config.data.noise = "none"
  with pytest.raises(noise.NoiseConfigError, match="mixed_noise_kinds"):
    make(setup, "mixed", mixed_noise_kinds=("files",))


def test_noise_is_deterministic_per_example(setup):
  for kind in ("mixed", "babble", "nonstationary"):
    first, second = make(setup, kind, index=5), make(setup, kind, index=5)
    for key in first:
      np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["noise"], make(setup, kind, index=6)["noise"])


def test_noise_keeps_the_talkers_of_the_clean_scene(setup):
  clean, noisy = make(setup, "none", index=4), make(setup, "mixed", index=4)
  for key in ("azimuth_deg", "room_index", "tir_db"):
    np.testing.assert_array_equal(clean[key], noisy[key])
  # Same talker images up to the mixture's peak normalisation.
  a, b = f32(clean, "reverberant"), f32(noisy, "reverberant")
  gain = np.sum(a * b) / np.sum(b * b)
  assert np.max(np.abs(a - gain * b)) < 2e-3


def test_one_talker_scene(setup):
  record = make(setup, "diffuse", index=0, num_sources=1)
  assert record["reverberant"].shape == (1, 8000) and record["images"].shape == (1, 8000, 6)
  assert record["tir_db"] == np.inf and np.isnan(record["separation_deg"])
  spec = shards.record_spec(8000, 1, 6, store_images=True, noise_kind=True)
  decoded = shards.decode_record(shards.encode_record(record, spec), spec)
  assert set(decoded) == set(record)


def test_babble_speakers_are_disjoint_from_every_split(tmp_path):
  rng = np.random.default_rng(0)
  ids = [f"s{k:02d}" for k in range(30)]
  splits = corpus_lib.split_speakers_by_hash(ids, (0.8, 0.1, 0.1), seed=3)
  talkers, babble = corpus_lib.carve_babble_speakers(splits, 0.2, (0.8, 0.1, 0.1), seed=3)
  assert talkers["val"] == splits["val"] and talkers["test"] == splits["test"]
  all_talkers = set().union(*map(set, talkers.values()))
  all_babble = set().union(*map(set, babble.values()))
  assert len(all_babble) == 6 and not all_talkers & all_babble
  assert all_talkers | all_babble == set(ids)
  assert all(babble[s] for s in babble) and sum(map(len, babble.values())) == 6
  # A folder corpus: flat layout, one folder per speaker.
  import soundfile
  for speaker in ids[:12]:
    (tmp_path / "corpus" / speaker).mkdir(parents=True)
    for k in range(2):
      soundfile.write(tmp_path / "corpus" / speaker / f"{k}.wav",
                      speechlike(rng, 8000), 8000)
  config = base.get_base_config("smoke")
  config.data.update(corpus=str(tmp_path / "corpus"), noise="babble", babble_speaker_fraction=0.25)
  with_babble = corpus_lib.build_corpus(config.data, str(tmp_path / "cache"), seed=1)
  config.data.noise = "none"
  without = corpus_lib.build_corpus(config.data, str(tmp_path / "cache"), seed=1)
  pools = {s: set(with_babble.babble_speakers(s)) for s in scenes.SPLITS}
  for split in scenes.SPLITS:
    assert pools[split] and not pools[split] & set().union(
        *(set(with_babble.split_speakers(s)) for s in scenes.SPLITS))
  assert not pools["train"] & pools["test"] and not pools["val"] & pools["test"]
  assert with_babble.split_speakers("test") == without.split_speakers("test")
  assert set(with_babble.split_speakers("train")) == set(without.split_speakers("train")) - set(
      ).union(*pools.values())
  with pytest.raises(ValueError, match="without babble speakers"):
    without.babble_utterances("train")


def test_new_fields_change_no_identity_of_a_config_that_does_not_use_them():
  from spatialsep_jax import train
  from spatialsep_jax.configs import mono
  config = mono.get_config("smoke")
  before = dataset.dataset_fingerprint(config), train.config_fingerprint(config)
  config.data.update(babble_talkers=2, babble_speaker_fraction=0.3,
                     mixed_noise_kinds=("diffuse",))
  config.data.espeak.babble_speakers = (5, 5, 5)
  assert (dataset.dataset_fingerprint(config), train.config_fingerprint(config)) == before
  config.data.noise = "babble"
  babble = dataset.dataset_fingerprint(config)
  assert babble != before[0]
  config.data.babble_talkers = 3
  assert dataset.dataset_fingerprint(config) != babble
  config.data.babble_speaker_fraction = 0.5       # a folder-corpus field: eSpeak babble ignores it
  assert dataset.dataset_fingerprint(config) == dataset.dataset_fingerprint(
      config.copy_and_resolve_references()) and dataset.unused_data_fields(config.data) == (
      "babble_speaker_fraction", "mixed_noise_kinds")


def tiny_16k_config(cache_dir):
  """:smoke at 16 kHz with a 6-voice eSpeak corpus (2 per split, 2 babble voices in train)."""
  config = base.get_base_config("smoke")
  config.data.update(cache_dir=cache_dir, noise="mixed", num_sources=1, sample_rate=16000,
                     rir_length_seconds=0.1, azimuth_step_deg=45.0, segment_seconds=0.5,
                     room_size_min=(3.0, 3.0, 2.5), room_size_max=(4.0, 4.0, 3.0),
                     snr_db_range=(-6.0, 3.0))
  config.data.espeak.update(num_speakers=6, utterances_per_speaker=2, split_speakers=(2, 2, 2),
                            babble_speakers=(2, 1, 1))
  config.data.num_examples.update(train=6, val=3, test=3)
  config.data.examples_per_shard = 6
  return config


def test_render_one_talker_at_16_khz_with_mixed_noise(tmp_path, smoke_cache_dir):
  """The real renderer (eSpeak talkers and babble, pyroomacoustics bank) at 16 kHz."""
  config = tiny_16k_config(smoke_cache_dir)
  directory = str(tmp_path / "shards")
  manifest = dataset.render(config, directory, num_workers=1, progress=False)
  assert manifest["sample_rate"] == 16000 and manifest["num_sources"] == 1
  assert manifest["noise_kinds"] == list(noise.NOISE_KINDS)
  talkers = {s["id"] for s in manifest["speakers"]}
  assert all(manifest["babble_speakers"][s] for s in scenes.SPLITS)
  assert not set().union(*map(set, manifest["babble_speakers"].values())) & talkers
  spec = shards.spec_from_manifest(manifest)
  kinds = set()
  for split in scenes.SPLITS:
    _, source = shards.open_split(directory, split)
    for i in range(len(source)):
      record = shards.decode_record(source[i], spec)
      assert record["mixture"].shape == (8000, 6) and record["reverberant"].shape == (1, 8000)
      assert int(record["room_index"]) in manifest["room_splits"][split]
      speech = f32(record, "reverberant")[0]
      stem = f32(record, "noise")
      measured = 10 * np.log10(np.mean(speech ** 2.0) / np.mean(stem ** 2.0))
      assert abs(measured - float(record["snr_db"])) < 0.1 and -6.0 <= record["snr_db"] <= 3.0
      kinds.add(manifest["noise_kinds"][int(record["noise_kind"])])
  assert kinds <= set(noise.MIXABLE_KINDS) and len(kinds) >= 2
  assert json.loads(json.dumps(manifest["data_config"]))["noise"] == "mixed"
  text = summarize.summary_text(config, directory, plot=False)
  assert "babble speakers (in no split's talker set): " in text and "TIR n/a (one talker)" in text
  assert all(f"{split}" in text for split in scenes.SPLITS) and "SNR -" in text


def test_espeak_babble_voices_are_new_speakers_and_leave_the_talkers_alone(smoke_cache_dir):
  # The corpus of the render test above (its synthesis is cached in the session's folder).
  config = tiny_16k_config(smoke_cache_dir)
  corpus = corpus_lib.build_corpus(config.data, smoke_cache_dir, seed=config.seed)
  config.data.noise = "none"
  plain = corpus_lib.build_corpus(config.data, smoke_cache_dir, seed=config.seed)
  talkers = {s.speaker_id for s in corpus.speakers}
  assert talkers == {s.speaker_id for s in plain.speakers}
  counts = tuple(config.data.espeak.babble_speakers)
  pools = [corpus.babble_speakers(split) for split in scenes.SPLITS]
  assert tuple(map(len, pools)) == counts and not set().union(*map(set, pools)) & talkers
  assert len(set().union(*map(set, pools))) == sum(counts)
  for split in scenes.SPLITS:
    assert corpus.split_speakers(split) == plain.split_speakers(split)
  utterance = corpus.utterances("train")[0]
  np.testing.assert_array_equal(corpus.load(utterance), plain.load(utterance))
  babble = corpus.load(corpus.babble_utterances("test")[0])
  assert babble.dtype == np.float32 and np.sqrt(np.mean(babble ** 2)) > 0.01
  voices = {(v.language, v.variant, v.pitch, v.rate_wpm) for v in corpus.voices}
  assert not voices & {(v.language, v.variant, v.pitch, v.rate_wpm) for v in corpus.babble_voices}
