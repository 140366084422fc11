"""The embedded default corpus: English speech synthesised with eSpeak NG.

`EspeakCorpus` synthesises `data.espeak.num_speakers` voices x
`data.espeak.utterances_per_speaker` sentences (from `sentences.txt`) at first
use and caches the waveforms under the cache folder, keyed by a hash of the
eSpeak config, the sample rate, the seed, the sentence file and `CACHE_VERSION`.

Each speaker is an English accent (`en`, `en-us`, `en-gb-scotland`, ...) with a
voice variant file shipped in eSpeak's data (`f1`..`f5`, `m1`..`m8`, ...), and
its own pitch, pitch range and speaking rate drawn from the seed; speakers
alternate female / male. The library comes from the `espeakng-loader` wheel and
is driven through its C API with ctypes.

Babble speakers (`data.espeak.babble_speakers` = per-split counts, used only by noise kinds that
need babble): further voices planned the same way after the corpus's own, ids `babble000`...,
split per split like the talkers, synthesised lazily into their own cache folder, so the
talkers, their splits and their cache are the same with or without them.

Determinism: libespeak-ng keeps synthesis state (oscillator phases, flutter
index, filter memories) in globals that survive between calls and even across
espeak_Terminate / espeak_Initialize, so an utterance depends on what the
process synthesised before. Synthesis therefore runs in fresh worker
subprocesses (`python -m data_pipeline.espeak_corpus`, never forked from a
parent that may have used the library), one per fixed block of `BLOCK_SPEAKERS`
speakers, so a seed gives byte-identical waveforms whatever the number of CPUs.
"""

import collections
import ctypes
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib

import espeakng_loader
import numpy as np

from data_pipeline import corpus_base

CACHE_VERSION = "espeak-corpus-v1"
NATIVE_RATE = 22050
BLOCK_SPEAKERS = 10
PEAK_LEVEL = 0.9
F0_UTTERANCES = 4             # utterances per speaker the mean F0 is measured on
SENTENCES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sentences.txt")
ENGLISH_LANGUAGES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
                     "en-gb-x-gbclan", "en-gb-x-gbcwmd")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Andrea", "Annie", "anika", "belinda",
                   "linda", "steph", "grandma")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Lee", "Denis",
                 "croak", "antonio", "michel", "miguel", "travis", "victor", "sandro")
PITCH_RANGE = (30, 70)        # espeakPITCH, 0..100 around the variant's base pitch
PITCH_SPAN_RANGE = (30, 80)   # espeakRANGE, 0..100 intonation range
RATE_WPM_RANGE = (140, 200)   # espeakRATE, words per minute

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VoiceSpec:
  """One synthetic speaker: eSpeak voice `<language>+<variant>` and its parameters."""
  speaker_id: str
  sex: int
  language: str
  variant: str
  pitch: int
  pitch_range: int
  rate_wpm: int
  sentence_indices: tuple[int, ...]

  @property
  def voice_name(self) -> str:
    return f"{self.language}+{self.variant}"


def read_sentences(path: str = SENTENCES_PATH) -> list[str]:
  """Non-empty lines of the sentence file."""
  with open(path, encoding="utf-8") as sentence_file:
    return [line.strip() for line in sentence_file if line.strip()]


def plan_voices(num_speakers: int, utterances_per_speaker: int, num_sentences: int,
                seed: int) -> list[VoiceSpec]:
  """Deterministic voices for `seed`: even indices female, odd male.

  Variants are cycled through in a seed-shuffled order, so distinct variant files
  are used before any repeats; repeated variants differ in accent, pitch, range
  and rate.
  """
  order_rng = np.random.default_rng([seed, 0])
  female_order = [FEMALE_VARIANTS[i] for i in order_rng.permutation(len(FEMALE_VARIANTS))]
  male_order = [MALE_VARIANTS[i] for i in order_rng.permutation(len(MALE_VARIANTS))]
  id_width = max(3, len(str(num_speakers - 1)))  # ids sort in index order
  specs = []
  for index in range(num_speakers):
    rng = np.random.default_rng([seed, 1, index])
    sex = index % 2  # 0 female, 1 male
    variants = female_order if sex == 0 else male_order
    specs.append(VoiceSpec(
        speaker_id=f"espeak{index:0{id_width}d}",
        sex=sex,
        language=ENGLISH_LANGUAGES[int(rng.integers(len(ENGLISH_LANGUAGES)))],
        variant=variants[(index // 2) % len(variants)],
        pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        pitch_range=int(rng.integers(PITCH_SPAN_RANGE[0], PITCH_SPAN_RANGE[1] + 1)),
        rate_wpm=int(rng.integers(RATE_WPM_RANGE[0], RATE_WPM_RANGE[1] + 1)),
        sentence_indices=tuple(int(i) for i in rng.choice(
            num_sentences, utterances_per_speaker, replace=False))))
  return specs


def assign_splits(specs: list[VoiceSpec], split_counts, seed: int) -> dict[str, list[str]]:
  """Speaker-disjoint splits of (n_train, n_val, n_test) speakers, sexes interleaved."""
  rng = np.random.default_rng([seed, 2])
  females = [specs[i].speaker_id for i in rng.permutation(len(specs)) if specs[i].sex == 0]
  males = [specs[i].speaker_id for i in rng.permutation(len(specs)) if specs[i].sex == 1]
  interleaved = [s for pair in zip(females, males) for s in pair]
  interleaved += females[len(males):] + males[len(females):]
  num_train, num_val, _ = split_counts
  return {"train": sorted(interleaved[:num_train]),
          "val": sorted(interleaved[num_train:num_train + num_val]),
          "test": sorted(interleaved[num_train + num_val:])}


class _Espeak:
  """libespeak-ng of espeakng-loader in synchronous mode; one per process."""

  def __init__(self):
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                 espeakng_loader.get_data_path().encode(), 0)
    if rate != NATIVE_RATE:
      raise RuntimeError(f"espeak_Initialize returned {rate}, expected {NATIVE_RATE} Hz; "
                         "reinstall espeakng-loader")
    self._lib = lib
    self._chunks = []
    self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive while the library holds it
    lib.espeak_SetSynthCallback(self._callback)

  def _collect(self, samples, num_samples, events):
    del events
    if num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(samples, shape=(num_samples,)).copy())
    return 0

  def synthesise(self, text: str, spec: VoiceSpec, rand_seed: int) -> np.ndarray:
    """int16 `[T]` at NATIVE_RATE of `text` spoken by `spec`."""
    if self._lib.espeak_SetVoiceByName(spec.voice_name.encode()) != 0:
      raise RuntimeError(f"eSpeak has no voice {spec.voice_name!r}; reinstall espeakng-loader")
    for parameter, value in ((_ESPEAK_RATE, spec.rate_wpm), (_ESPEAK_PITCH, spec.pitch),
                             (_ESPEAK_RANGE, spec.pitch_range)):
      self._lib.espeak_SetParameter(parameter, value, 0)
    self._lib.espeak_ng_SetRandSeed(rand_seed)
    self._chunks = []
    encoded = text.encode("utf-8") + b"\0"
    status = self._lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0,
                                    _ESPEAK_CHARS_UTF8, None, None)
    self._lib.espeak_Synchronize()
    if status != 0 or not self._chunks:
      raise RuntimeError(f"eSpeak failed (status {status}) on {text!r} with {spec.voice_name}")
    return np.concatenate(self._chunks)


def _synthesise_block(specs: list[VoiceSpec], sentences: list[str],
                      sample_rate: int) -> list[tuple[list[np.ndarray], float]]:
  """Worker: per speaker its int16 `[T]` utterances at `sample_rate` and mean F0 (Hz)."""
  engine = _Espeak()
  results = []
  for spec in specs:
    native = []
    for utterance_index, sentence_index in enumerate(spec.sentence_indices):
      rand_seed = zlib.crc32(f"{spec.speaker_id}:{utterance_index}".encode())
      native.append(engine.synthesise(sentences[sentence_index], spec, rand_seed)
                    .astype(np.float32) / 32768.0)
    waveforms = []
    for waveform in native:
      resampled = corpus_base.resample(waveform, NATIVE_RATE, sample_rate)
      resampled *= PEAK_LEVEL / max(float(np.max(np.abs(resampled))), 1e-9)
      waveforms.append(np.round(resampled * 32767.0).astype(np.int16))
    f0 = corpus_base.estimate_f0(
        np.concatenate(waveforms[:F0_UTTERANCES]).astype(np.float32) / 32767.0, sample_rate)
    results.append((waveforms, f0))
  return results


def _worker_main(request_path: str):
  """Entry of a synthesis subprocess: request json in, `<request>.npz` out."""
  with open(request_path) as request_file:
    request = json.load(request_file)
  specs = [VoiceSpec(**dict(v, sentence_indices=tuple(v["sentence_indices"])))
           for v in request["voices"]]
  results = _synthesise_block(specs, request["sentences"], request["sample_rate"])
  waveforms = [w for speaker_waveforms, _ in results for w in speaker_waveforms]
  np.savez(request_path + ".npz", audio=np.concatenate(waveforms),
           lengths=np.array([len(w) for w in waveforms], np.int64),
           f0_hz=np.array([f0 for _, f0 in results], np.float64))


def _run_blocks(blocks: list[list[VoiceSpec]], sentences: list[str], sample_rate: int,
                workers: int, work_dir: str) -> list[list[tuple[list[np.ndarray], float]]]:
  """Synthesises each block in its own fresh `python -m` subprocess, `workers` at a time.

  Plain subprocesses (not multiprocessing) work from any caller: scripts without a
  `__main__` guard and daemonic pool workers included.
  """
  environment = dict(os.environ)
  package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  environment["PYTHONPATH"] = os.pathsep.join(
      p for p in (package_parent, environment.get("PYTHONPATH", "")) if p)
  requests = []
  for block_index, block in enumerate(blocks):
    request_path = os.path.join(work_dir, f"block{block_index:04d}.json")
    with open(request_path, "w") as request_file:
      json.dump(dict(voices=[dataclasses.asdict(s) for s in block], sentences=sentences,
                     sample_rate=sample_rate), request_file)
    requests.append(request_path)
  pending = list(requests)
  running = []
  while pending or running:
    while pending and len(running) < workers:
      request_path = pending.pop(0)
      running.append((request_path, subprocess.Popen(
          [sys.executable, "-m", "data_pipeline.espeak_corpus", request_path], env=environment,
          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    request_path, process = running.pop(0)
    _, stderr = process.communicate()
    if process.returncode != 0:
      raise RuntimeError(f"eSpeak synthesis subprocess failed ({process.returncode}): "
                         f"{stderr.decode(errors='replace').strip().splitlines()[-1:]}")
  results = []
  for request_path, block in zip(requests, blocks):
    with np.load(request_path + ".npz") as arrays:
      utterances = np.split(arrays["audio"], np.cumsum(arrays["lengths"])[:-1])
      per_speaker = len(block[0].sentence_indices)
      results.append([(utterances[i * per_speaker:(i + 1) * per_speaker], float(f0))
                      for i, f0 in enumerate(arrays["f0_hz"])])
  return results


def _synthesise_into(cache_path: str, specs: list[VoiceSpec], sentences: list[str],
                     sample_rate: int, num_workers: int) -> None:
  """Synthesises `specs` (blocks of BLOCK_SPEAKERS in fresh subprocesses) into
  `cache_path`/waveforms.npz + speakers.json, each written atomically."""
  start = time.perf_counter()
  blocks = [specs[i:i + BLOCK_SPEAKERS] for i in range(0, len(specs), BLOCK_SPEAKERS)]
  workers = min(len(blocks), num_workers or os.cpu_count() or 1)
  os.makedirs(cache_path, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_path) as work_dir:
    block_results = _run_blocks(blocks, sentences, sample_rate, workers, work_dir)
  results = [r for block in block_results for r in block]
  waveforms = [w for speaker_waveforms, _ in results for w in speaker_waveforms]
  offsets = np.cumsum([0] + [len(w) for w in waveforms]).astype(np.int64)
  temporary = os.path.join(cache_path, f"waveforms.{os.getpid()}.tmp.npz")
  np.savez(temporary, audio=np.concatenate(waveforms), offsets=offsets)
  os.replace(temporary, os.path.join(cache_path, "waveforms.npz"))
  meta = dict(version=CACHE_VERSION, sample_rate=sample_rate,
              voices=[dataclasses.asdict(s) for s in specs],
              f0_hz=[None if math.isnan(f0) else f0 for _, f0 in results])
  temporary = os.path.join(cache_path, f"speakers.{os.getpid()}.tmp")
  with open(temporary, "w") as meta_file:
    json.dump(meta, meta_file, indent=1)
  os.replace(temporary, os.path.join(cache_path, "speakers.json"))
  seconds = time.perf_counter() - start
  audio_seconds = offsets[-1] / sample_rate
  log.info("eSpeak corpus: synthesised %d speakers x %d utterances (%.0f s of audio) in %.1f s "
           "with %d worker processes -> %s", len(specs), len(specs[0].sentence_indices),
           audio_seconds, seconds, workers, cache_path)


class EspeakCorpus(corpus_base.Corpus):
  """Synthetic multi-speaker English corpus (see the module docstring)."""

  def __init__(self, espeak_config, sample_rate: int = 8000, seed: int = 0,
               cache_dir: str = ".cache", num_workers: int = 0, babble_speakers=None):
    """babble_speakers: (train, val, test) counts of babble voices (None or zeros: none)."""
    num_speakers = int(espeak_config.num_speakers)
    utterances_per_speaker = int(espeak_config.utterances_per_speaker)
    split_counts = tuple(int(n) for n in espeak_config.split_speakers)
    if len(split_counts) != 3 or sum(split_counts) != num_speakers:
      raise ValueError(f"data.espeak.split_speakers={split_counts} must be 3 counts summing to "
                       f"data.espeak.num_speakers={num_speakers}")
    if min(split_counts) < 2:
      raise ValueError(f"data.espeak.split_speakers={split_counts} leaves a split with fewer "
                       "than 2 speakers; give train, val and test at least 2 speakers each")
    sentences = read_sentences()
    if not 1 <= utterances_per_speaker <= len(sentences):
      raise ValueError(f"data.espeak.utterances_per_speaker={utterances_per_speaker} must be in "
                       f"1..{len(sentences)} (the sentences in {SENTENCES_PATH})")
    babble_counts = tuple(int(n) for n in (babble_speakers or ()))
    if babble_counts and any(babble_counts):
      if len(babble_counts) != 3 or min(babble_counts) < 1:
        raise ValueError(f"data.espeak.babble_speakers={babble_counts} must be 3 counts >= 1 "
                         "(train, val, test babble voices)")
      if num_speakers + sum(babble_counts) > 1000:
        raise ValueError(f"data.espeak.num_speakers + babble speakers = "
                         f"{num_speakers + sum(babble_counts)} exceeds 1000 voices; use fewer")
    else:
      babble_counts = ()
    self._babble_counts = babble_counts
    self._babble = None
    self._babble_audio = {}
    self._num_speakers, self._utterances_per_speaker = num_speakers, utterances_per_speaker
    self._seed, self._num_workers = int(seed), num_workers
    self.sample_rate = int(sample_rate)
    self.skipped = collections.Counter()
    specs = plan_voices(num_speakers, utterances_per_speaker, len(sentences), seed)
    key = hashlib.sha256(json.dumps(dict(
        version=CACHE_VERSION, num_speakers=num_speakers,
        utterances_per_speaker=utterances_per_speaker, split_speakers=split_counts,
        sample_rate=self.sample_rate, seed=int(seed),
        espeakng_loader=importlib.metadata.version("espeakng-loader"),
        sentences=hashlib.sha256("\n".join(sentences).encode()).hexdigest()),
        sort_keys=True).encode()).hexdigest()[:16]
    self.cache_path = os.path.join(cache_dir, f"espeak_{key}")
    if not os.path.exists(os.path.join(self.cache_path, "speakers.json")):
      self._synthesise(specs, sentences, num_workers)
    with open(os.path.join(self.cache_path, "speakers.json")) as meta_file:
      meta = json.load(meta_file)
    with np.load(os.path.join(self.cache_path, "waveforms.npz")) as arrays:
      self._audio = arrays["audio"]
      self._offsets = arrays["offsets"]
    self.voices = specs
    self.speakers = [corpus_base.Speaker(s.speaker_id, s.sex,
                                         math.nan if f0 is None else float(f0))
                     for s, f0 in zip(specs, meta["f0_hz"])]
    self._index = {}
    by_speaker = {}
    for speaker_index, spec in enumerate(specs):
      by_speaker[spec.speaker_id] = []
      for k in range(utterances_per_speaker):
        utterance = corpus_base.Utterance(spec.speaker_id, f"espeak:{spec.speaker_id}:{k}")
        self._index[utterance.key] = speaker_index * utterances_per_speaker + k
        by_speaker[spec.speaker_id].append(utterance)
    self._splits = {split: [u for s in ids for u in by_speaker[s]]
                    for split, ids in assign_splits(specs, split_counts, seed).items()}

  def _synthesise(self, specs: list[VoiceSpec], sentences: list[str], num_workers: int):
    _synthesise_into(self.cache_path, specs, sentences, self.sample_rate, num_workers)

  def _babble_splits(self) -> dict[str, list[corpus_base.Utterance]] | None:
    if not self._babble_counts:
      return None
    if self._babble is None:
      self._babble = self._load_babble()
    return self._babble

  def _load_babble(self) -> dict[str, list[corpus_base.Utterance]]:
    """Plans, synthesises (once, cached) and indexes the babble voices."""
    counts = self._babble_counts
    sentences = read_sentences()
    planned = plan_voices(self._num_speakers + sum(counts), self._utterances_per_speaker,
                          len(sentences), self._seed)[self._num_speakers:]
    specs = [dataclasses.replace(spec, speaker_id=f"babble{index:03d}")
             for index, spec in enumerate(planned)]
    path = self.cache_path + f"_babble_{'-'.join(map(str, counts))}"
    if not os.path.exists(os.path.join(path, "speakers.json")):
      _synthesise_into(path, specs, sentences, self.sample_rate, self._num_workers)
    with np.load(os.path.join(path, "waveforms.npz")) as arrays:
      audio, offsets = arrays["audio"], arrays["offsets"]
    per_speaker = self._utterances_per_speaker
    by_speaker = {}
    for speaker_index, spec in enumerate(specs):
      by_speaker[spec.speaker_id] = []
      for k in range(per_speaker):
        utterance = corpus_base.Utterance(spec.speaker_id, f"espeak:{spec.speaker_id}:{k}")
        index = speaker_index * per_speaker + k
        self._babble_audio[utterance.key] = audio[offsets[index]:offsets[index + 1]]
        by_speaker[spec.speaker_id].append(utterance)
    self.babble_voices = specs
    return {split: [u for s in ids for u in by_speaker[s]]
            for split, ids in assign_splits(specs, counts, self._seed).items()}

  def load(self, utt: corpus_base.Utterance) -> np.ndarray:
    """float32 `[T]` at `sample_rate` (peak 0.9)."""
    if utt.key in self._babble_audio:
      return self._babble_audio[utt.key].astype(np.float32) / 32767.0
    if utt.key not in self._index:
      raise ValueError(f"{utt.key!r} is not an utterance of this eSpeak corpus; take utterances "
                       "from corpus.utterances(split)")
    index = self._index[utt.key]
    return self._audio[self._offsets[index]:self._offsets[index + 1]].astype(np.float32) / 32767.0


if __name__ == "__main__":
  _worker_main(sys.argv[1])
