"""From a config to rendered shards: dataset identity, default locations, rendering.

A dataset is identified by the fields of `config.data` that change what is
rendered (not which channels a model reads or which target it trains on), so
every input configuration of the study shares one render.
"""

import functools
import hashlib
import json
import logging
import os
import shlex
import sys
import time

from data_pipeline import array as array_lib
from data_pipeline import noise as noise_lib
from data_pipeline import render as render_lib
from data_pipeline import shards

SPLITS = ("train", "val", "test")
# config.data fields that say where files are or how fast batches come: they change neither
# the rendered shards nor a trained model (the trainer's run identity leaves them out too).
RESULT_NEUTRAL_FIELDS = ("loader", "prefetch", "shards_dir", "cache_dir", "loader_workers",
                         "host_audio_dtype", "device_prefetch")
# Fields that change what a model reads from the shards, not the shards themselves.
_READ_SIDE_FIELDS = RESULT_NEUTRAL_FIELDS + ("input_channels", "target", "dynamic_mixing")
DATASET_FORMAT_VERSION = 2  # = shards.RECORD_VERSION: room-disjoint splits, target mics
# Identity of how noise is rendered, in the fingerprint of noisy datasets only (so noise-free
# datasets keep theirs). 2: pink diffuse noise from evenly spread azimuths, babble,
# nonstationary, steady-state room fields, the noise_kind record field. 3: noise sources from
# 50 Hz up, transients 3-15 dB, point sources off the talkers' azimuths (renders of the
# intermediate 2 get a new identity).
NOISE_RENDER_VERSION = 3


def unused_data_fields(data) -> tuple[str, ...]:
  """Dotted config.data fields (from the noise kinds) that `data` (config.data or its dict) does
  not use: left out of the dataset fingerprint and the run identity, so adding them to the base
  config changed neither for any configuration that does not use them."""
  kinds = noise_lib.kinds_of(data)
  babble = "babble" in kinds
  espeak = data["corpus"] == "espeak"
  used = {"babble_talkers": babble, "babble_speaker_fraction": babble and not espeak,
          "espeak.babble_speakers": babble and espeak,
          "mixed_noise_kinds": data["noise"] == "mixed"}
  return tuple(field for field, is_used in used.items() if not is_used)


def identity_data(data: dict) -> dict:
  """A copy of the dict of config.data without its `unused_data_fields`."""
  data = json.loads(json.dumps(data, default=str))
  for field in unused_data_fields(data):
    *parents, leaf = field.split(".")
    node = data
    for part in parents:
      node = node.get(part, {})
    node.pop(leaf, None)
  return data

log = logging.getLogger(__name__)


def dataset_fingerprint(config) -> str:
  data = {k: v for k, v in identity_data(config.data.to_dict()).items()
          if k not in _READ_SIDE_FIELDS}
  data["target_mics"] = list(array_lib.target_mics(config.data))  # () and (reference,) alike
  fields = {"data": data, "seed": int(config.seed), "version": DATASET_FORMAT_VERSION}
  if config.data.noise != "none":
    fields["noise_version"] = NOISE_RENDER_VERSION
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_dir(config) -> str:
  return config.data.cache_dir or os.path.join(".", ".cache")


def shards_dir(config) -> str:
  """`config.data.shards_dir`, or ./data/<corpus name>-<fingerprint> by default."""
  if config.data.shards_dir:
    return config.data.shards_dir
  corpus = "espeak" if config.data.corpus == "espeak" else os.path.basename(
      os.path.normpath(config.data.corpus))
  return os.path.join(".", "data", f"{corpus}-{dataset_fingerprint(config)}")


def render_command(argv=None) -> str:
  """`python launch/render.py` with the --config flags (and render.py's --workdir) of `argv`
  (default sys.argv): the command that renders the data of the running configuration."""
  argv = list(sys.argv if argv is None else argv)
  script = os.path.basename(argv[0]) if argv else ""
  kept, pending = [], False
  for arg in argv[1:]:
    if pending:
      kept.append(arg)
      pending = False
    elif arg.startswith("--config") or (script == "render.py" and arg.startswith("--workdir")):
      kept.append(arg)
      pending = "=" not in arg
  if not any(arg.startswith("--config") for arg in kept):
    return shards.GENERIC_RENDER_COMMAND
  return " ".join(["python", "launch/render.py"] + [shlex.quote(arg) for arg in kept])


def read_manifest(directory: str) -> dict:
  if not os.path.exists(shards.manifest_path(directory)):
    raise FileNotFoundError(f"no manifest.json in {directory}; render the shards first with "
                            f"{render_command()}")
  return shards.read_manifest(directory)


def dataset_problem(directory: str) -> str | None:
  """Why the shards in `directory` cannot be read as they are (None when they can): no manifest,
  an unusable one, unfinished splits or shards whose files are missing or of the wrong size."""
  if not os.path.exists(shards.manifest_path(directory)):
    return f"no shards are rendered in {directory}"
  try:
    manifest = shards.read_manifest(directory)
    if not shards.is_complete(manifest):
      return f"the shards in {directory} are only partly rendered"
    shards.verify_shards(directory, manifest)
  except (shards.ManifestError, shards.ShardError) as error:
    return str(error)
  return None


def is_rendered(directory: str) -> bool:
  return dataset_problem(directory) is None


def ensure_dataset(config, progress: bool = True) -> str:
  """Returns the shards directory of `config`, rendering the embedded default data if missing.

  A user corpus is never rendered implicitly (it can take hours): the error
  names the render command instead.
  """
  directory = shards_dir(config)
  problem = dataset_problem(directory)
  if problem is None:
    return directory
  if config.data.corpus != "espeak":
    if os.path.exists(shards.manifest_path(directory)):
      raise ValueError(problem)
    raise FileNotFoundError(
        f"the shards for corpus {config.data.corpus!r} are not rendered in {directory}; run "
        f"{render_command()} first")
  lock = _render_lock(directory, wait=True)  # another run may be rendering the same data
  try:
    problem = dataset_problem(directory)
    if problem is not None:
      print(f"Rendering the embedded default data into {directory} ({problem}; once, later runs "
            "reuse it)")
      render(config, directory, progress=progress)
  finally:
    lock.release()
  return directory


RENDER_LOCK_POLL_SECONDS = 2.0


def _render_lock(directory: str, wait: bool):
  """The held `<directory>/.render.lock` (io_safety.WorkdirLock, re-entrant in one process).
  Held elsewhere: WorkdirLocked naming the holder, or with `wait` a wait until it is free."""
  from spatialsep_jax import io_safety
  lock = io_safety.WorkdirLock(directory, "render")
  announced = False
  while True:
    try:
      return lock.acquire()
    except io_safety.WorkdirLocked as error:
      if not wait:
        raise
      if not announced:
        print(f"waiting for the render lock: {error}", flush=True)
        announced = True
      time.sleep(RENDER_LOCK_POLL_SECONDS)


def render(config, directory: str | None = None, num_workers: int | None = None,
           progress: bool = True, command: str | None = None) -> dict:
  """Renders every missing (or failing, see shards.prepare_manifest) shard of `config` into
  `directory`; returns the manifest. `command` (default: from sys.argv) is recorded in the
  manifest as the way to re-render it, for the messages about damaged shards. A second
  process rendering into the same `directory` stops with one line naming the first."""
  directory = directory or shards_dir(config)
  if segment_samples(config) < 1:
    raise ValueError(f"data.segment_seconds={config.data.segment_seconds} gives "
                     f"{segment_samples(config)} samples per example at {config.data.sample_rate} "
                     "Hz; set data.segment_seconds > 0")
  lock = _render_lock(directory, wait=False)  # a second renderer of `directory` gets one line
  try:
    return _render_locked(config, directory, num_workers, progress, command)
  finally:
    lock.release()


def _render_locked(config, directory, num_workers, progress, command) -> dict:
  from data_pipeline import corpus as corpus_lib
  from data_pipeline import scenes
  corpus = corpus_lib.build_corpus(config.data, cache_dir(config), seed=config.seed)
  if corpus.skipped:
    log.info("corpus files skipped: %s", dict(corpus.skipped))
  for split in SPLITS:
    if len({u.speaker_id for u in corpus.utterances(split)}) < config.data.num_sources:
      usable = f" ({corpus.usable_summary()})" if hasattr(corpus, "usable_summary") else ""
      raise ValueError(f"the {split} split of the corpus has fewer than "
                       f"{config.data.num_sources} speakers{usable}; add speakers or change the "
                       "split")
  noise_extra = {}
  if config.data.noise != "none":
    noise_lib.kinds_of(config.data)  # a bad data.mixed_noise_kinds stops here, before the bank
    noise_extra["noise_kinds"] = list(noise_lib.NOISE_KINDS)
  if noise_lib.uses_babble(config.data):
    # Synthesises (eSpeak) or lists the babble speakers once here, before any render worker.
    noise_extra["babble_speakers"] = {split: corpus.babble_pool(split).speakers
                                      for split in SPLITS}
  bank = scenes.load_bank(config, cache_dir(config), num_workers=num_workers or 0,
                         progress=progress)
  speakers = [dict(id=s.speaker_id, sex=int(s.sex), f0=float(s.f0_hz)) for s in corpus.speakers]
  manifest_extra = dict(
      sample_rate=int(config.data.sample_rate),
      segment_samples=segment_samples(config),
      channel_names=list(array_lib.CHANNEL_NAMES),
      reference_mic=config.data.reference_mic,
      target_mics=list(array_lib.target_mics(config.data)),
      num_sources=int(config.data.num_sources),
      speakers=speakers,
      store_images=bool(config.data.store_images),
      corpus=str(config.data.corpus),
      scene=str(config.data.scene),
      noise=str(config.data.noise),
      **noise_extra,
      skipped_files=dict(corpus.skipped),
      room_splits={split: [int(r) for r in scenes.rooms_of_split(config, bank, split)]
                   for split in SPLITS},
      data_config=json.loads(json.dumps(config.data.to_dict(), default=str)),
      render_command=command or render_command())
  make_example = functools.partial(_make_example, config.to_json())
  counts = {split: int(config.data.num_examples[split]) for split in SPLITS}
  return render_lib.render_dataset(
      directory, counts, int(config.data.examples_per_shard), make_example, manifest_extra,
      dataset_fingerprint(config), num_workers=num_workers, progress=progress)


def segment_samples(config) -> int:
  return int(round(config.data.segment_seconds * config.data.sample_rate))


MAX_SCENE_DRAWS = 16
# Per-process cache of (config, corpus, bank) so each render worker builds them once.
_WORKER_CACHE: dict = {}


def _scene_inputs(config_json: str):
  if config_json not in _WORKER_CACHE:
    import ml_collections
    from data_pipeline import corpus as corpus_lib
    from data_pipeline import scenes
    config = ml_collections.ConfigDict(json.loads(config_json))
    corpus = corpus_lib.build_corpus(config.data, cache_dir(config), seed=config.seed)
    bank = scenes.load_bank(config, cache_dir(config), num_workers=1, progress=False)
    by_speaker = {split: _group_by_speaker(corpus.utterances(split)) for split in SPLITS}
    babble = ({split: corpus.babble_pool(split) for split in SPLITS}
              if noise_lib.uses_babble(config.data) else {})
    _WORKER_CACHE.clear()
    _WORKER_CACHE[config_json] = (config, corpus, bank, by_speaker, babble)
  return _WORKER_CACHE[config_json]


def _group_by_speaker(utterances):
  groups = {}
  for utt in utterances:
    groups.setdefault(utt.speaker_id, []).append(utt)
  return {speaker: groups[speaker] for speaker in sorted(groups)}


def _make_example(config_json: str, split: str, index: int) -> dict:
  """Example `index` of `split`: S different speakers, one utterance each, one scene (and the
  split's babble pool when the noise needs one).

  A draw whose crop is too quiet (scenes.QuietCrop) is redrawn, speakers and utterances
  included, from the same example generator (so the result stays deterministic).
  """
  from data_pipeline import scenes
  config, corpus, bank, by_speaker, babble = _scene_inputs(config_json)
  rng = scenes.scene_seed(config.seed, split, index)
  speakers = list(by_speaker[split])
  for _ in range(MAX_SCENE_DRAWS):
    chosen = rng.choice(len(speakers), size=config.data.num_sources, replace=False)
    utterances, speaker_info = [], []
    for choice in chosen:
      speaker_id = speakers[int(choice)]
      options = by_speaker[split][speaker_id]
      utterance = options[int(rng.integers(len(options)))]
      utterances.append(corpus.load(utterance))
      speaker = corpus.speakers[corpus.speaker_index(speaker_id)]
      speaker_info.append((corpus.speaker_index(speaker_id), int(speaker.sex),
                           float(speaker.f0_hz)))
    try:
      return scenes.make_example(config, tuple(utterances), tuple(speaker_info), bank, rng,
                                 index, split=split, babble=babble.get(split))
    except scenes.QuietCrop as error:
      last = error
  raise ValueError(f"example {index} of {split}: {MAX_SCENE_DRAWS} draws of utterances gave no "
                   f"crop within {-float(config.data.min_crop_level_db):g} dB of the utterance's "
                   f"active level (last: {last}); lower data.min_crop_level_db or use longer "
                   "utterances")
