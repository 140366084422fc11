"""Tests of data_pipeline.corpus (folder corpora) and data_pipeline.espeak_corpus."""

import math
import os

import numpy as np
import pytest
import scipy.signal
import soundfile

from spatialsep_jax.configs import base
from data_pipeline import corpus
from data_pipeline import espeak_corpus

RATE = 16000


def _tone(f0: float, rate: int = RATE, seconds: float = 0.3, amplitude: float = 0.3):
  """Harmonic complex (4 harmonics) with a 20 ms fade in/out: float32 `[T]`."""
  t = np.arange(int(seconds * rate)) / rate
  x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5))
  fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
  return (amplitude * x * fade / np.max(np.abs(x))).astype(np.float32)


def _write(path, waveform, rate=RATE):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, waveform, rate, subtype="PCM_16")


def _build(root, tmp_path, **kwargs):
  return corpus.FolderCorpus(str(root), sample_rate=8000, cache_dir=str(tmp_path / "cache"),
                             **kwargs)


def _librispeech(tmp_path, num_speakers=6):
  root = tmp_path / "LibriSpeech" / "train-clean-100"
  ids = [19 + 7 * i for i in range(num_speakers)]
  for n, speaker in enumerate(ids):
    for utt in range(2):
      _write(str(root / str(speaker) / "198" / f"{speaker}-198-{utt:04d}.flac"),
             _tone(100 + 20 * n))
  with open(tmp_path / "LibriSpeech" / "SPEAKERS.TXT", "w") as table:
    table.write(";ID  |SEX| SUBSET | MINUTES | NAME\n")
    for n, speaker in enumerate(ids):
      table.write(f"{speaker:<5}| {'FM'[n % 2]} | train-clean-100  | 25.19 | Reader {n}\n")
  return root, ids


def test_librispeech_layout_ids_sex_and_f0(tmp_path):
  root, ids = _librispeech(tmp_path)
  c = _build(root, tmp_path)
  assert c.layout == "librispeech"
  assert [s.speaker_id for s in c.speakers] == sorted(str(i) for i in ids)
  by_id = {s.speaker_id: s for s in c.speakers}
  for n, speaker in enumerate(ids):
    assert by_id[str(speaker)].sex == n % 2
    assert by_id[str(speaker)].f0_hz == pytest.approx(100 + 20 * n, rel=0.02)
  assert not c.skipped


def test_vctk_layout_reads_both_speaker_info_formats(tmp_path):
  root = tmp_path / "VCTK-Corpus"
  ids = [f"p{225 + i}" for i in range(6)]
  for speaker in ids:
    for utt in (1, 2):
      _write(str(root / "wav48_silence_trimmed" / speaker / f"{speaker}_{utt:03d}_mic1.flac"),
             _tone(150))
  with open(root / "speaker-info.txt", "w") as table:
    table.write("ID  AGE  GENDER  ACCENTS  REGION\n")
    for n, speaker in enumerate(ids):
      written_id = speaker if n < 3 else speaker[1:]  # VCTK 0.92 vs. 0.80 style ids
      table.write(f"{written_id}  23  {'FM'[n % 2]}    English    Southern  England\n")
  c = _build(root, tmp_path)
  assert c.layout == "vctk"
  assert [(s.speaker_id, s.sex) for s in c.speakers] == [(s, n % 2) for n, s in enumerate(ids)]


def test_wsj0_layout_sex_unknown_until_spkrinfo(tmp_path):
  root = tmp_path / "wsj0"
  ids = ["01a", "01b", "02c", "20g", "40n", "4a0"]
  for speaker in ids:
    for utt in ("c0201", "c0202"):
      _write(str(root / "si_tr_s" / speaker / f"{speaker}{utt}.wav"), _tone(120))
  c = _build(root, tmp_path)
  assert c.layout == "wsj0"
  assert [s.speaker_id for s in c.speakers] == sorted(ids)
  assert all(s.sex == -1 for s in c.speakers)
  os.makedirs(root / "doc")
  with open(root / "doc" / "spkrinfo.txt", "w") as table:
    table.write(";  Speaker info\n")
    for n, speaker in enumerate(ids):
      table.write(f"{speaker.upper()}   {'FM'[n % 2]}   1960   NS\n")
  c = _build(root, tmp_path)
  assert [s.sex for s in c.speakers] == [n % 2 for n in range(6)]


def test_flat_layout_speaker_from_prefix_or_folder(tmp_path):
  root = tmp_path / "flat"
  for name in ("alice_001.wav", "alice_002.wav", "bob-1.wav", "carl_a.wav", "dora.wav"):
    _write(str(root / name), _tone(130))
  for name in ("eve/one.wav", "eve/deep/two.wav", "finn/x.flac"):
    _write(str(root / name), _tone(130))
  c = _build(root, tmp_path, layout="auto")
  assert c.layout == "flat"
  assert [s.speaker_id for s in c.speakers] == ["alice", "bob", "carl", "dora", "eve", "finn"]
  assert all(s.sex == -1 for s in c.speakers)
  eve = [u for split in corpus.SPLITS for u in c.utterances(split) if u.speaker_id == "eve"]
  assert len(eve) == 2


def test_splits_disjoint_deterministic_and_stable(tmp_path):
  root, ids = _librispeech(tmp_path, num_speakers=12)
  c = _build(root, tmp_path, seed=3)
  splits = {s: c.split_speakers(s) for s in corpus.SPLITS}
  assert sum(len(v) for v in splits.values()) == len(ids)
  assert set().union(*splits.values()) == {str(i) for i in ids}
  assert all(len(v) >= 2 for v in splits.values())
  again = corpus.FolderCorpus(str(root), 8000, seed=3, cache_dir=str(tmp_path / "other_cache"))
  assert all(again.utterances(s) == c.utterances(s) for s in corpus.SPLITS)
  _write(str(root / ids[0].__str__() / "198" / f"{ids[0]}-198-0009.flac"), _tone(90))
  grown = _build(root, tmp_path, seed=3)
  assert {s: grown.split_speakers(s) for s in corpus.SPLITS} == splits
  other_seeds = [_build(root, tmp_path, seed=s).split_speakers("train") for s in range(4, 10)]
  assert any(train != splits["train"] for train in other_seeds)


def test_hash_splits_keep_speakers_when_speakers_are_added():
  speakers = [f"s{i:02d}" for i in range(40)]
  before = corpus.split_speakers_by_hash(speakers, (0.6, 0.2, 0.2), seed=5)
  after = corpus.split_speakers_by_hash(speakers + ["new1", "new2"], (0.6, 0.2, 0.2), seed=5)
  for split in corpus.SPLITS:
    assert set(before[split]) <= set(after[split])
  small = corpus.split_speakers_by_hash(speakers[:7], (0.8, 0.1, 0.1), seed=5)
  assert sorted(len(v) for v in small.values()) == [2, 2, 3]


def test_bad_files_counted_per_reason_and_other_rate_resampled(tmp_path):
  root = tmp_path / "flat"
  for speaker in ("a", "b", "c", "d", "e", "f"):
    _write(str(root / speaker / "good.wav"), _tone(140))
  with open(root / "a" / "garbage.wav", "wb") as garbage:
    garbage.write(np.random.default_rng(0).bytes(400))
  open(root / "b" / "empty.wav", "wb").close()
  _write(str(root / "c" / "silent.wav"), np.zeros(4000, np.float32))
  _write(str(root / "d" / "clipped.wav"), np.sign(_tone(140)) * 1.0)
  _write(str(root / "e" / "rate11k.flac"), _tone(140, rate=11025), rate=11025)
  _write(str(root / "f" / "rate0.wav"), _tone(140))
  with open(root / "f" / "rate0.wav", "r+b") as header:
    header.seek(24)  # WAVE fmt chunk: sample rate field
    header.write((0).to_bytes(4, "little"))
  c = _build(root, tmp_path)
  assert dict(c.skipped) == {"unreadable": 1, "empty": 1, "silent": 1, "clipped": 1,
                             "unreadable sample rate": 1}
  utterance = next(u for s in corpus.SPLITS for u in c.utterances(s)
                   if u.key.endswith("rate11k.flac"))
  stored, stored_rate = soundfile.read(utterance.key, dtype="float32")
  expected = scipy.signal.resample_poly(stored.astype(np.float64), 320, 441)
  loaded = c.load(utterance)
  assert stored_rate == 11025 and loaded.dtype == np.float32
  np.testing.assert_allclose(loaded, expected, atol=1e-6)


def test_scan_cache_reused_and_only_new_files_validated(tmp_path, monkeypatch):
  root, ids = _librispeech(tmp_path)
  _build(root, tmp_path)
  validated = []
  original = corpus._validate_file
  monkeypatch.setattr(corpus, "_validate_file", lambda p: validated.append(p) or original(p))
  _build(root, tmp_path)
  assert not validated
  new_file = str(root / str(ids[1]) / "198" / f"{ids[1]}-198-0007.flac")
  _write(new_file, _tone(100))
  c = _build(root, tmp_path)
  assert validated == [new_file]
  assert any(u.key == new_file for s in corpus.SPLITS for u in c.utterances(s))


def test_missing_empty_and_too_small_corpus_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    _build(tmp_path / "nowhere", tmp_path)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="no .wav/.flac"):
    _build(tmp_path / "empty", tmp_path)
  for speaker in ("a", "b", "c"):
    _write(str(tmp_path / "small" / f"{speaker}_1.wav"), _tone(100))
  with pytest.raises(ValueError, match="at least 6 speakers"):
    _build(tmp_path / "small", tmp_path)


def test_estimate_f0_matches_known_pitch():
  for f0 in (85.0, 120.0, 210.0, 330.0):
    assert corpus.estimate_f0(_tone(f0, rate=8000, seconds=0.5), 8000) == pytest.approx(
        f0, rel=0.015)
  assert math.isnan(corpus.estimate_f0(np.zeros(8000), 8000))


def test_build_corpus_dispatches_on_data_corpus(tmp_path):
  root, _ = _librispeech(tmp_path)
  data = base.get_base_config().data
  data.corpus = str(root)
  assert isinstance(corpus.build_corpus(data, str(tmp_path / "cache"), seed=1),
                    corpus.FolderCorpus)


# ------------------------------------------------------------------- eSpeak

def _espeak_data(sample_rate=8000):
  data = base.get_base_config("smoke").data
  data.sample_rate = sample_rate
  data.espeak.num_speakers = 6
  data.espeak.utterances_per_speaker = 2
  data.espeak.split_speakers = (2, 2, 2)
  return data


@pytest.fixture(scope="module")
def espeak_8k(tmp_path_factory):
  return corpus.build_corpus(_espeak_data(), str(tmp_path_factory.mktemp("espeak")), seed=7)


def test_espeak_speech_is_non_silent_with_female_f0_above_male(espeak_8k):
  c = espeak_8k
  assert isinstance(c, espeak_corpus.EspeakCorpus) and c.sample_rate == 8000
  assert [s.sex for s in c.speakers] == [0, 1, 0, 1, 0, 1]
  for split in corpus.SPLITS:
    assert sorted(c.speakers[c.speaker_index(s)].sex for s in c.split_speakers(split)) == [0, 1]
    for utterance in c.utterances(split):
      waveform = c.load(utterance)
      assert waveform.dtype == np.float32 and waveform.ndim == 1
      assert 1.0 < waveform.size / 8000 < 8.0
      assert 20 * np.log10(np.sqrt(np.mean(waveform**2))) > -35.0
      assert np.max(np.abs(waveform)) <= 0.9 + 1e-4
  female = [s.f0_hz for s in c.speakers if s.sex == 0]
  male = [s.f0_hz for s in c.speakers if s.sex == 1]
  assert 140 < np.mean(female) < 320 and 70 < np.mean(male) < 150
  assert np.mean(female) > np.mean(male)


def test_espeak_rate_consistent_between_8k_and_16k(espeak_8k, tmp_path):
  c16 = espeak_corpus.EspeakCorpus(_espeak_data(16000).espeak, 16000, 7, str(tmp_path))
  for speaker_8k, speaker_16k in zip(espeak_8k.speakers, c16.speakers):
    assert speaker_16k.f0_hz == pytest.approx(speaker_8k.f0_hz, rel=0.03)
  for utterance in espeak_8k.utterances("train"):
    assert abs(c16.load(utterance).size - 2 * espeak_8k.load(utterance).size) <= 2


def test_espeak_same_seed_byte_identical(espeak_8k, tmp_path):
  again = corpus.build_corpus(_espeak_data(), str(tmp_path), seed=7)
  assert again.cache_path != espeak_8k.cache_path
  for split in corpus.SPLITS:
    assert again.utterances(split) == espeak_8k.utterances(split)
    for utterance in again.utterances(split):
      assert again.load(utterance).tobytes() == espeak_8k.load(utterance).tobytes()
  assert [s.f0_hz for s in again.speakers] == [s.f0_hz for s in espeak_8k.speakers]
  assert espeak_corpus.plan_voices(6, 2, 200, 8) != espeak_corpus.plan_voices(6, 2, 200, 7)


def test_espeak_config_errors(tmp_path):
  data = _espeak_data()
  data.espeak.split_speakers = (3, 2, 2)
  with pytest.raises(ValueError, match="summing to"):
    corpus.build_corpus(data, str(tmp_path), seed=0)
  data.espeak.split_speakers = (4, 1, 1)
  with pytest.raises(ValueError, match="at least 2 speakers"):
    corpus.build_corpus(data, str(tmp_path), seed=0)


def test_nonfinite_and_out_of_range_files_are_skipped_and_counted(tmp_path):
  root, ids = _librispeech(tmp_path)
  bad = {"nan": np.nan, "inf": np.inf, "loud": 1.5}
  for n, (name, value) in enumerate(bad.items()):
    waveform = _tone(150)
    waveform[100 + n] = value
    soundfile.write(str(root / str(ids[n]) / "198" / f"{ids[n]}-198-{9000 + n}.wav"), waveform,
                    RATE, subtype="FLOAT")
  c = _build(root, tmp_path)
  assert c.skipped == {"non-finite samples": 2, "out-of-range samples": 1}
  keys = [u.key for split in corpus.SPLITS for u in c.utterances(split)]
  assert len(keys) == 2 * len(ids) and not any("-198-9" in key for key in keys)


def test_no_usable_speakers_message_gives_the_skip_counts(tmp_path):
  root = tmp_path / "flat"
  os.makedirs(root)
  for n in range(4):
    waveform = _tone(120 + 10 * n)
    waveform[10] = np.nan
    soundfile.write(str(root / f"s{n}_a.wav"), waveform, RATE, subtype="FLOAT")
  soundfile.write(str(root / "s9_a.wav"), np.zeros(800, np.float32), RATE)
  with pytest.raises(ValueError, match=r"0 speakers.*0 usable files of 5; skipped 5 "
                                       r"\(non-finite samples: 4, silent: 1\)"):
    _build(root, tmp_path)


def test_missing_file_at_load_names_it(tmp_path):
  root, _ = _librispeech(tmp_path)
  c = _build(root, tmp_path)
  utterance = c.utterances("train")[0]
  os.remove(utterance.key)
  with pytest.raises(FileNotFoundError, match=f"corpus file {utterance.key} is missing"):
    c.load(utterance)
  with open(utterance.key, "wb") as f:
    f.write(b"not audio at all")
  with pytest.raises(ValueError, match=f"corpus file {utterance.key} can no longer be read"):
    c.load(utterance)
