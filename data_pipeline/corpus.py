"""Speech corpora: speaker-labelled utterances for rendering two-talker scenes.

A corpus exposes `sample_rate`, the `speakers` list (sorted by `speaker_id`; the
render manifest stores this list and records store indices into it),
speaker-disjoint `utterances(split)` for 'train' | 'val' | 'test', `load(utt)`
returning float32 `[T]` audio at `sample_rate`, and `skipped`, a Counter of
files left out per reason.

`FolderCorpus` reads any folder of wav/flac files. Speaker identity comes from
the folder layout (`data.corpus_layout`):

  librispeech  `<root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`,
               sex from SPEAKERS.TXT in the root or one of its parents;
  vctk         `<root>/wav48*/p225/p225_001.wav` (or `_mic1.flac`),
               sex from speaker-info.txt in the root or one of its parents;
  wsj0         `<root>/.../si_tr_s/01a/01ac0201.wav`: speaker = the 3-character
               folder; sex from a `spkrinfo*` file under or above the root;
  flat         `<root>/<speaker>/...`: speaker = first folder under the root;
               files directly in the root: speaker = file name up to the first
               `_` or `-`;
  auto         the first of librispeech, vctk, wsj0 that matches at least 90% of
               the audio files, else flat.

Babble speakers (`babble_fraction` > 0, set from data.babble_speaker_fraction when a noise kind
needs babble): the ceil(fraction x speakers) training speakers with the highest split hash leave
the training split and become babble speakers, ranked by a second hash into train / val / test
babble pools (data.speaker_split fractions, at least one each); val and test talkers are the same
with or without babble, training keeps the rest.

Every file is validated once (unreadable, empty, non-finite or out-of-range
[-1, 1] samples, silent, clipped, unreadable sample rate); the scan is cached as json in the cache folder and re-used for
files whose size and modification time did not change.
"""

import collections
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import re
import wave

import numpy as np
import soundfile

from data_pipeline import espeak_corpus, noise
from data_pipeline.corpus_base import (F0_MAX_HZ, F0_MIN_HZ, SPLITS, Corpus, Speaker,  # noqa: F401
                                       Utterance, estimate_f0, resample)

AUDIO_EXTENSIONS = (".wav", ".flac")
LAYOUTS = ("auto", "librispeech", "vctk", "wsj0", "flat")
SILENCE_DBFS = -60.0
CLIPPED_FRACTION = 1e-3
FULL_SCALE = 0.999
F0_ANALYSIS_SECONDS = 10.0
SCAN_VERSION = 2  # 2: non-finite and out-of-range samples are skipped
LAYOUT_MATCH_FRACTION = 0.9
BABBLE_SPEAKERS_DEFAULT = (8, 4, 4)   # configs/base.py's data.espeak.babble_speakers
BABBLE_FRACTION_DEFAULT = 0.1         # configs/base.py's data.babble_speaker_fraction

_LIBRISPEECH_RE = re.compile(r"(?:^|/)(\d+)/(\d+)/\1-\2-\d+\.(?:flac|wav)$", re.IGNORECASE)
_VCTK_RE = re.compile(r"(?:^|/)([a-z]\d+)/\1_\d+(?:_mic\d)?\.(?:flac|wav)$", re.IGNORECASE)
_WSJ0_RE = re.compile(r"(?:^|/)([0-9a-z]{3})/\1[0-9a-z]{5}\.(?:flac|wav)$", re.IGNORECASE)
_WSJ0_SET_RE = re.compile(r"(?:^|/)s[id]_(?:tr|dt|et)[^/]*/([0-9a-z]{3})/[^/]+$", re.IGNORECASE)
_SEX_WORDS = {"f": 0, "female": 0, "m": 1, "male": 1}

log = logging.getLogger(__name__)


def _check_waveform(waveform: np.ndarray) -> str | None:
  """Reason to skip `[T]` audio in [-1, 1], or None when it is usable."""
  if waveform.size == 0:
    return "empty"
  if not np.all(np.isfinite(waveform)):
    return "non-finite samples"
  if np.max(np.abs(waveform)) > 1.0:
    return "out-of-range samples"
  rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
  if rms <= 0.0 or 20.0 * math.log10(rms) < SILENCE_DBFS:
    return "silent"
  if np.mean(np.abs(waveform) >= FULL_SCALE) > CLIPPED_FRACTION:
    return "clipped"
  return None


def _validate_file(path: str) -> dict:
  """Scan entry of one audio file: {'reason'} when skipped, else rate, frames, f0."""
  if os.path.getsize(path) == 0:
    return {"reason": "empty"}
  try:
    waveform, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, ValueError):
    try:
      with wave.open(path) as wav_file:
        header_rate = wav_file.getframerate()
    except (wave.Error, EOFError, OSError):
      header_rate = None
    return {"reason": "unreadable sample rate" if header_rate == 0 else "unreadable"}
  if rate <= 0:
    return {"reason": "unreadable sample rate"}
  mono = waveform[:, 0]
  reason = _check_waveform(mono)
  if reason:
    return {"reason": reason}
  f0 = estimate_f0(mono[:int(F0_ANALYSIS_SECONDS * rate)], rate)
  return {"rate": int(rate), "frames": int(mono.size), "f0": None if math.isnan(f0) else f0}


def _speaker_for(relative_path: str, layout: str) -> str | None:
  """Speaker id of a file (path relative to the root, '/'-separated), None if unmatched."""
  if layout == "librispeech":
    match = _LIBRISPEECH_RE.search(relative_path)
    return match.group(1) if match else None
  if layout == "vctk":
    match = _VCTK_RE.search(relative_path)
    return match.group(1) if match else None
  if layout == "wsj0":
    match = _WSJ0_RE.search(relative_path) or _WSJ0_SET_RE.search(relative_path)
    return match.group(1).lower() if match else None
  parts = relative_path.split("/")
  if len(parts) > 1:
    return parts[0]
  return re.split(r"[_-]", os.path.splitext(parts[0])[0], maxsplit=1)[0]


def detect_layout(relative_paths: list[str]) -> str:
  """The first of librispeech, vctk, wsj0 matching >= 90% of the paths, else 'flat'."""
  for layout in ("librispeech", "vctk", "wsj0"):
    matched = sum(_speaker_for(p, layout) is not None for p in relative_paths)
    if relative_paths and matched >= LAYOUT_MATCH_FRACTION * len(relative_paths):
      return layout
  return "flat"


def _find_metadata_files(root: str, other_files: list[str], layout: str) -> list[str]:
  """Speaker-table files for `layout`: in the root, its two parents, or (WSJ0) under it."""
  names = {"librispeech": ("speakers.txt",), "vctk": ("speaker-info.txt", "speaker_info.txt"),
           "wsj0": ("spkrinfo",), "flat": ()}[layout]
  found = []
  folder = root
  for _ in range(3):
    if os.path.isdir(folder):
      found += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                if n.lower().startswith(names) and os.path.isfile(os.path.join(folder, n))]
    folder = os.path.dirname(folder)
  if layout == "wsj0":
    found += [p for p in other_files if os.path.basename(p).lower().startswith(names)]
  return sorted(set(found))


def parse_speaker_sex(path: str, speaker_ids: set[str]) -> dict[str, int]:
  """Sex per speaker from a table whose rows start with the id and hold an M/F column.

  Reads LibriSpeech SPEAKERS.TXT (`19 | F | ...`), VCTK speaker-info.txt
  (`p225 23 F ...` or `225 23 F ...`) and WSJ0 spkrinfo files; rows of unknown
  speakers and comment lines (`;`, `#`) are ignored.
  """
  by_lower = {s.lower(): s for s in speaker_ids}
  sexes = {}
  with open(path, encoding="utf-8", errors="replace") as table:
    for line in table:
      if line.lstrip().startswith((";", "#")):
        continue
      tokens = [t.strip() for t in re.split(r"[|,\t ]+", line.strip()) if t.strip()]
      if len(tokens) < 2:
        continue
      first = tokens[0].lower()
      speaker = by_lower.get(first) or by_lower.get("p" + first)
      sex = next((_SEX_WORDS[t.lower()] for t in tokens[1:5] if t.lower() in _SEX_WORDS), None)
      if speaker is not None and sex is not None:
        sexes[speaker] = sex
  return sexes


def _hash_position(seed, speaker_id: str, salt: str = "") -> float:
  return int(hashlib.sha256(f"{salt}{seed}:{speaker_id}".encode()).hexdigest()[:15], 16) / 16**15


def carve_babble_speakers(splits: dict[str, list[str]], fraction: float, fractions,
                          seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
  """(talker splits with babble speakers taken out of train, {split: babble speaker ids}).

  The ceil(fraction x all speakers) (at least 3) training speakers of highest sha256(seed, id)
  become babble speakers; a second hash ranks them into train / val / test pools of
  round(fraction_split x count) (at least 1 each, train the rest)."""
  total = sum(len(ids) for ids in splits.values())
  count = max(3, math.ceil(float(fraction) * total))
  train = sorted(splits["train"], key=lambda s: _hash_position(seed, s))
  if len(train) - count < 2:
    raise ValueError(f"babble needs {count} speakers (data.babble_speaker_fraction={fraction}, "
                     f"at least 3) out of {len(train)} training speakers and training must keep "
                     "2; lower the fraction or use a corpus with more speakers")
  babble = sorted(train[len(train) - count:], key=lambda s: _hash_position(seed, s, "babble:"))
  fractions = tuple(float(f) for f in fractions)
  num_val = max(1, round(fractions[1] / sum(fractions) * count))
  num_test = max(1, round(fractions[2] / sum(fractions) * count))
  pools = {"train": babble[:count - num_val - num_test],
           "val": babble[count - num_val - num_test:count - num_test],
           "test": babble[count - num_test:]}
  talkers = dict(splits, train=sorted(train[:len(train) - count]))
  return talkers, {split: sorted(ids) for split, ids in pools.items()}


def split_speakers_by_hash(speaker_ids: list[str], fractions, seed: int) -> dict[str, list[str]]:
  """Speaker-disjoint train/val/test speaker lists.

  Each speaker's split follows from u = sha256(seed, id) in [0, 1) against the
  cumulative `fractions`, so it depends only on the seed and its id: adding files
  or speakers never moves an existing speaker. When that leaves a split with
  fewer than 2 speakers (small corpora), speakers are instead ranked by u and
  val / test get round(fraction * N) speakers, at least 2 each.
  """
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) <= 0:
    raise ValueError(
        f"data.speaker_split={fractions} must be 3 positive fractions (train, val, test)")
  bounds = np.cumsum(fractions) / sum(fractions)
  position = {s: _hash_position(seed, s) for s in speaker_ids}
  splits = {split: sorted(s for s in speaker_ids if lower <= position[s] < upper)
            for split, lower, upper in zip(SPLITS, (0.0, *bounds[:2]), (*bounds[:2], 1.0))}
  if min(len(ids) for ids in splits.values()) >= 2:
    return splits
  ordered = sorted(speaker_ids, key=lambda s: position[s])
  num_val = max(2, round(fractions[1] / sum(fractions) * len(ordered)))
  num_test = max(2, round(fractions[2] / sum(fractions) * len(ordered)))
  num_train = len(ordered) - num_val - num_test
  if num_train < 2:
    raise ValueError(
        f"{len(ordered)} speakers cannot fill speaker-disjoint train/val/test splits with at "
        "least 2 speakers each; use a corpus with at least 6 speakers")
  return {"train": sorted(ordered[:num_train]),
          "val": sorted(ordered[num_train:num_train + num_val]),
          "test": sorted(ordered[num_train + num_val:])}


class FolderCorpus(Corpus):
  """A folder of wav/flac speech files (see the module docstring for the layouts)."""

  def __init__(self, root: str, sample_rate: int = 8000, layout: str = "auto",
               speaker_split=(0.8, 0.1, 0.1), seed: int = 0, cache_dir: str = ".cache",
               babble_fraction: float = 0.0):
    if layout not in LAYOUTS:
      raise ValueError(f"data.corpus_layout={layout!r} is unknown; use one of {LAYOUTS}")
    if int(sample_rate) <= 0:
      raise ValueError(f"data.sample_rate={sample_rate} must be a positive integer rate in Hz")
    self.root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(self.root):
      raise ValueError(f"corpus folder {self.root} does not exist; set data.corpus to a folder "
                       "of wav/flac files or to 'espeak'")
    self.sample_rate = int(sample_rate)
    audio_files, other_files = self._list_files()
    if not audio_files:
      raise ValueError(f"corpus folder {self.root} holds no .wav/.flac files; point data.corpus "
                       "at a speech corpus or set it to 'espeak'")
    relative = [os.path.relpath(p, self.root).replace(os.sep, "/") for p in audio_files]
    self.layout = detect_layout(relative) if layout == "auto" else layout
    entries = self._scan(audio_files, cache_dir)

    self.skipped = collections.Counter()
    by_speaker = collections.defaultdict(list)
    f0_by_speaker = collections.defaultdict(list)
    self._native_rates = {}
    for path, rel in zip(audio_files, relative):
      entry = entries[path]
      speaker = _speaker_for(rel, self.layout)
      if speaker is None:
        self.skipped[f"path does not match the {self.layout} layout"] += 1
      elif "reason" in entry:
        self.skipped[entry["reason"]] += 1
      else:
        by_speaker[speaker].append(Utterance(speaker, path))
        self._native_rates[path] = entry["rate"]
        if entry.get("f0") is not None:
          f0_by_speaker[speaker].append(entry["f0"])

    sexes = {}
    for table in _find_metadata_files(self.root, other_files, self.layout):
      sexes.update(parse_speaker_sex(table, set(by_speaker)))
    self.speakers = [
        Speaker(s, sexes.get(s, -1), float(np.mean(f0_by_speaker[s])) if f0_by_speaker[s]
                else math.nan) for s in sorted(by_speaker)]
    try:
      split_ids = split_speakers_by_hash(list(by_speaker), speaker_split, seed)
    except ValueError as error:
      raise ValueError(f"{self.root}: {error} ({self.usable_summary()})") from None
    self._babble = None
    if babble_fraction > 0:
      try:
        split_ids, babble_ids = carve_babble_speakers(split_ids, babble_fraction, speaker_split,
                                                      seed)
      except ValueError as error:
        raise ValueError(f"{self.root}: {error} ({self.usable_summary()})") from None
      self._babble = {split: sorted((u for s in ids for u in by_speaker[s]), key=lambda u: u.key)
                      for split, ids in babble_ids.items()}
    self._splits = {split: sorted((u for s in ids for u in by_speaker[s]), key=lambda u: u.key)
                    for split, ids in split_ids.items()}
    summary = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
    log.log(logging.WARNING if self.skipped else logging.INFO,
            "corpus %s (%s layout): %d usable files, %d speakers (train/val/test %d/%d/%d); "
            "skipped %d files%s", self.root, self.layout, len(self._native_rates),
            len(self.speakers), *(len(split_ids[s]) for s in SPLITS),
            sum(self.skipped.values()), f" ({summary})" if summary else "")

  def _babble_splits(self):
    return self._babble

  def usable_summary(self) -> str:
    """'12 usable files of 20; skipped 8 (non-finite samples: 5, silent: 3)'."""
    skipped = sum(self.skipped.values())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
    return (f"{len(self._native_rates)} usable files of {len(self._native_rates) + skipped}; "
            f"skipped {skipped}" + (f" ({reasons})" if reasons else ""))

  def _list_files(self) -> tuple[list[str], list[str]]:
    audio, other = [], []
    for folder, subfolders, files in os.walk(self.root):
      subfolders.sort()
      for name in sorted(files):
        path = os.path.join(folder, name)
        (audio if name.lower().endswith(AUDIO_EXTENSIONS) else other).append(path)
    return audio, other

  def _scan(self, audio_files: list[str], cache_dir: str) -> dict[str, dict]:
    """Validation entry per file, re-using cached entries of unchanged files."""
    cache_path = os.path.join(
        cache_dir, "corpus_scan_" + hashlib.sha256(
            f"{SCAN_VERSION}:{self.root}".encode()).hexdigest()[:16] + ".json")
    cached = {}
    if os.path.exists(cache_path):
      try:
        with open(cache_path) as cache_file:
          cached = json.load(cache_file)["files"]
      except (OSError, ValueError, KeyError):
        cached = {}
    stamps = {}
    for path in audio_files:
      stat = os.stat(path)
      stamps[path] = [stat.st_mtime_ns, stat.st_size]
    entries = {p: cached[p] for p in audio_files
               if p in cached and cached[p].get("stamp") == stamps[p]}
    to_scan = [p for p in audio_files if p not in entries]
    if to_scan:
      # libsndfile releases the GIL while decoding, so threads scan in parallel.
      with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for path, entry in zip(to_scan, pool.map(_validate_file, to_scan)):
          entries[path] = dict(entry, stamp=stamps[path])
      os.makedirs(cache_dir, exist_ok=True)
      temporary = f"{cache_path}.{os.getpid()}.tmp"
      with open(temporary, "w") as cache_file:
        json.dump({"root": self.root, "version": SCAN_VERSION, "files": entries}, cache_file)
      os.replace(temporary, cache_path)
    log.info("corpus scan of %s: %d files validated, %d from the cache %s", self.root,
             len(to_scan), len(audio_files) - len(to_scan), cache_path)
    return entries

  def load(self, utt: Utterance) -> np.ndarray:
    """float32 `[T]`: first channel of the file, resampled to `sample_rate`."""
    if utt.key not in self._native_rates:
      raise ValueError(f"{utt.key} is not a usable file of this corpus; take utterances from "
                       "corpus.utterances(split)")
    if not os.path.isfile(utt.key):
      raise FileNotFoundError(f"corpus file {utt.key} is missing (it was there when the corpus "
                              "was scanned); restore it, or render again to re-scan the corpus")
    try:
      waveform, rate = soundfile.read(utt.key, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
      raise ValueError(f"corpus file {utt.key} can no longer be read ({error}); restore it, or "
                       "render again to re-scan the corpus") from None
    return resample(waveform[:, 0], rate, self.sample_rate)


def build_corpus(data_config, cache_dir: str, seed: int | None = None) -> Corpus:
  """The corpus of `data_config` (config.data): eSpeak when data.corpus == 'espeak'.

  `seed` (pass config.seed) fixes the speaker splits and the eSpeak voices; when
  omitted, `data_config.seed` is used if present, else 42 (configs/base.py).
  """
  if seed is None:
    seed = data_config.get("seed", 42) if hasattr(data_config, "get") else 42
  babble = noise.uses_babble(data_config) if hasattr(data_config, "get") else False
  if data_config.corpus == "espeak":
    counts = tuple(data_config.espeak.get("babble_speakers", BABBLE_SPEAKERS_DEFAULT)) if babble \
        else None
    return espeak_corpus.EspeakCorpus(data_config.espeak, data_config.sample_rate, seed,
                                      cache_dir, babble_speakers=counts)
  if not data_config.corpus:
    raise ValueError("data.corpus is empty; set it to 'espeak' or to a folder of wav/flac files")
  fraction = float(data_config.get("babble_speaker_fraction", BABBLE_FRACTION_DEFAULT)) \
      if babble else 0.0
  return FolderCorpus(data_config.corpus, data_config.sample_rate, data_config.corpus_layout,
                      data_config.speaker_split, seed, cache_dir, babble_fraction=fraction)
