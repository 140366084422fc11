"""Test-split evaluation: one row per mixture (all metrics + scene metadata), resumable,
and a summary with 95% confidence intervals broken down by the study's conditions.

Rows are appended to ``rows.csv`` as each mixture finishes, so an interrupted
evaluation resumes from the rows already written. With ``eval.save_estimates`` every scored
estimate is kept (``estimates/``, near-lossless FLAC), and ``evaluate_estimates`` scores those
files again against the same split rendered on another machine (metrics the first one lacked).
"""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from spatialsep_jax import checkpoint as checkpoint_lib
from spatialsep_jax import io_safety
from spatialsep_jax import metrics as metrics_lib
from spatialsep_jax import models
from spatialsep_jax import oracles as oracles_lib
from spatialsep_jax import tasks
from spatialsep_jax import train as train_lib

# Breakdowns of the study (bins are [lo, hi) except the last, which is closed).
SEPARATION_BINS = (("co-located (<=15 deg)", 0.0, 15.001), ("near (15-60 deg)", 15.001, 60.0),
                   ("far (>=60 deg)", 60.0, 180.001))
RT60_BINS = (("RT60 < 0.4 s", 0.0, 0.4), ("RT60 0.4-0.6 s", 0.4, 0.6), ("RT60 >= 0.6 s", 0.6, 99.0))
TIR_BINS = (("TIR < -2 dB", -99.0, -2.0), ("TIR -2..2 dB", -2.0, 2.0), ("TIR >= 2 dB", 2.0, 99.0))
SNR_BINS = (("SNR < -3 dB", -99.0, -3.0), ("SNR -3..0 dB", -3.0, 0.0), ("SNR 0..5 dB", 0.0, 5.0),
            ("SNR >= 5 dB", 5.0, 99.0))
F0_BINS = (("F0 distance < 2 st", 0.0, 2.0), ("F0 distance 2-6 st", 2.0, 6.0),
           ("F0 distance >= 6 st", 6.0, 99.0))
SUMMARY_METRICS = ("sisdr_improvement", "sdr_improvement", "stoi_improvement", "pesq_improvement",
                   "sisdr", "sdr", "stoi", "pesq", "vocoded_sisdr_improvement",
                   "vocoded_stoi_improvement", "vocoded_stoi", "estoi_improvement", "estoi",
                   "segsnr_improvement", "segsnr", "csig", "cbak", "covl")


ORACLE_INPUT_NOTE = ("oracle teacher input: the model read the clean target ({keys}) at test "
                     "time (config.eval.oracle_train_inputs); NOT a deployable result")


def oracle_inputs(config, model) -> tuple[str, ...]:
  """The batch keys (clean signals) the model reads at evaluation: its registered
  `train_inputs` when `config.eval.oracle_train_inputs` opts in, else (). Without the opt-in
  the model gets the mixture alone, as at inference: models that read clean signals only to
  learn (NASS's contrastive term) need nothing else, and a model that cannot run without them
  (a stage-1 CNUNet: a teacher of the clean target) raises its own one-line error naming the
  opt-in."""
  keys = tuple(getattr(model, "train_inputs", ()) or ())
  if not keys or not config.eval.get("oracle_train_inputs", False):
    return ()
  return keys


def make_separate_fn(config, model, references: tuple[str, ...] = ()):
  """jitted (variables, mixture [B, T, C]) -> estimates [B, S', T] float32; `variables` is
  {"params": ..., other collections} or a bare params tree. With `references` (batch keys,
  see `oracle_inputs`) the function is (variables, mixture, {key: [B, ...]}) and the model
  gets them as in validation."""
  if not isinstance(model, models.Model):
    model = models.Model(model, len(config.data.input_channels))

  def separate(variables, mixture, given=None):
    if "params" not in variables:
      variables = {"params": variables}
    if not references:
      return model.estimates(variables, mixture)
    outputs, _ = model.apply(variables, mixture.astype(jnp.float32),
                             references={k: given[k].astype(jnp.float32) for k in references})
    return outputs["estimates"].astype(jnp.float32)

  return jax.jit(separate)


def load_trained(config, workdir: str, which: str = "best"):
  """(programs, variables {"params", model collections}, step) of a trained run; errors
  name the fix."""
  programs = train_lib.build_programs(config)
  abstract = jax.eval_shape(programs.init, jax.random.key(config.seed))
  try:
    state, meta, step = checkpoint_lib.restore_params(workdir, abstract, which)
  except (ValueError, KeyError) as e:
    raise ValueError(f"the checkpoint in {workdir} does not match this config ({e}); pass the "
                     "--config the run was trained with") from None
  if meta.get("checkpoint_format", 1) != train_lib.CHECKPOINT_FORMAT:
    raise ValueError(f"the checkpoint in {workdir} has format {meta.get('checkpoint_format', 1)}"
                     f" (this version reads {train_lib.CHECKPOINT_FORMAT}); evaluate it with the "
                     "commit that wrote it, or retrain")
  saved = meta.get("config_fingerprint")
  if saved and saved != train_lib.config_fingerprint(config):
    raise ValueError(f"the checkpoint in {workdir} was trained with another configuration; pass "
                     f"the --config of that run (see {workdir}/config.json)")
  return programs, {"params": state.params, **state.model_state}, step


def _per_source(batch: dict, key: str, i: int, cast=float) -> dict:
  if key not in batch:
    return {}
  values = np.atleast_1d(batch[key][i])
  return {f"{key}_{k}": cast(v) for k, v in enumerate(values)}


def _scene_columns(batch: dict, i: int, noise_kinds=()) -> dict:
  """Scene metadata of example i: scalars as they are, per-source arrays as `<key>_<k>`;
  `noise_kind` by name (the manifest's `noise_kinds`) when the data mixes noise kinds."""
  columns = {"example_id": int(batch["example_id"][i])}
  if "noise_kind" in batch and len(noise_kinds):
    columns["noise_kind"] = str(noise_kinds[int(batch["noise_kind"][i])])
  for key in ("separation_deg", "rt60", "tir_db", "snr_db", "room_index"):
    if key in batch:
      columns[key] = float(batch[key][i])
  for key in ("azimuth_deg", "drr_db", "f0_hz"):
    columns.update(_per_source(batch, key, i))
  columns.update(_per_source(batch, "speaker_index", i, int))
  if "azimuth_deg" in batch and np.size(batch["azimuth_deg"][i]) >= 2 and "separation_deg" in batch:
    az = np.asarray(batch["azimuth_deg"][i], float)
    lateral = np.degrees(np.arcsin(np.sin(np.radians(az[:2]))))
    # Mirror images about the interaural axis share ITD/ILD: the cone of confusion.
    columns["front_back_confusable"] = bool(abs(lateral[0] - lateral[1]) <= 15.0
                                            and columns["separation_deg"] > 15.0)
  if "speaker_sex" in batch and np.size(batch["speaker_sex"][i]) >= 2:
    columns["sex_pair"] = _sex_pair(batch["speaker_sex"][i])
  if "f0_hz" in batch and np.size(batch["f0_hz"][i]) >= 2:
    f0 = np.asarray(batch["f0_hz"][i], float)
    with np.errstate(invalid="ignore", divide="ignore"):
      columns["f0_distance_semitones"] = (float(abs(12 * np.log2(f0[0] / f0[1])))
                                          if np.all(f0[:2] > 0) else math.nan)
  return columns


def _sex_pair(sex) -> str:
  if np.any(np.asarray(sex) < 0):
    return "unknown"
  return "same-sex" if sex[0] == sex[1] else "female-male"


def _metric_columns(result: dict) -> dict:
  """Per-mixture values: the mean over references of each metric, and each reference's
  value as `<metric>_s<k>`."""
  columns = {}
  for key, values in result.items():
    if key == "perm":
      continue
    values = np.atleast_1d(np.asarray(values, float))
    columns[key] = float(np.nanmean(values)) if np.any(np.isfinite(values)) else math.nan
    if len(values) > 1:
      columns.update({f"{key}_s{k}": float(v) for k, v in enumerate(values)})
  return columns


def read_rows(path: str) -> list[dict]:
  """The rows of a rows.csv (values parsed back to numbers and booleans); [] when missing."""
  if not os.path.exists(path):
    return []
  # Complete rows only (a torn last row is left out; the checksum column is not a value).
  return [{k: _parse(v) for k, v in row.items()} for row in io_safety.read_csv(path)]


def _parse(value: str):
  if value in ("True", "False"):
    return value == "True"
  try:
    return float(value) if any(c in value for c in ".en") else int(value)
  except ValueError:
    return value


def _open_rows(path: str, fieldnames: list):
  """An appender of rows (flush + fsync per row, a crc32 column so a torn row is detected)."""
  writer = io_safety.CsvAppender(path, fieldnames)
  return writer, writer


def run_evaluation(config, workdir: str, *, which: str = "best", split: str | None = None,
                   shards_dir: str | None = None, progress: bool = True) -> dict:
  """Evaluates a trained run on `split` (the task of `config.eval.task`), with the oracle
  masks of `config.eval.oracles` scored beside it; returns the summary (also on disk)."""
  split = split or config.eval.split
  programs, variables, step = load_trained(config, workdir, which)
  out_dir = os.path.join(workdir, "eval", f"{split}-{which}-step{step}")
  summary = evaluate_variables(config, variables, out_dir, split=split, shards_dir=shards_dir,
                               progress=progress, model=programs.model)
  summary.update(checkpoint=which, step=int(step), workdir=workdir)
  _write_summary(summary, out_dir)
  summary["out_dir"] = out_dir
  return summary


def evaluate_variables(config, variables, out_dir: str, *, split: str | None = None,
                       shards_dir: str | None = None, progress: bool = True, model=None) -> dict:
  """Scores `variables` ({"params", ...}) of `config`'s model on `split` into `out_dir`
  (rows.csv, oracle rows, summary); resumes from the rows already there. With
  `config.eval.save_estimates` every scored estimate is also kept in `<out_dir>/estimates/`
  (`write_estimate`), for `evaluate_estimates` to score again elsewhere."""
  split = split or config.eval.split
  task = tasks.get(config.eval.task)
  model = model or models.build_model(config)
  oracle_keys = oracle_inputs(config, model)
  separate = make_separate_fn(config, model, oracle_keys)
  rate = int(config.data.sample_rate)
  save = bool(config.eval.get("save_estimates", False))
  folder = os.path.join(out_dir, ESTIMATES_FOLDER)
  if save:
    _remove_stale_temporaries(folder)
  # Rows scored before estimates were saved (an evaluation resumed with save_estimates on):
  # their estimates are made again and saved, without scoring them twice.
  scored_before = ({int(r["example_id"]) for r in read_rows(os.path.join(out_dir, "rows.csv"))}
                   if save else set())

  def model_estimates(batch, wanted, n):
    ids = [int(batch["example_id"][i]) for i in range(n)]
    backfill = [i for i in range(n) if ids[i] in scored_before
                and not os.path.exists(estimate_path(folder, ids[i]))]
    if not wanted and not backfill:
      return {}
    given = {k: jnp.asarray(batch[k]) for k in oracle_keys} if oracle_keys else None
    estimates = np.asarray(separate(variables, jnp.asarray(batch["mixture"]), given))
    for i in backfill:
      est, ref, _ = task.example(estimates[i], batch, i, config)
      perm = (metrics_lib.align_by_sisdr(est, ref) if task.align else np.arange(len(ref)))
      write_estimate(estimate_path(folder, ids[i]), est[perm], rate)
    return {i: task.example(estimates[i], batch, i, config)[0] for i in wanted}

  saved_examples = 0

  def keep(batch, i, scored, references):
    nonlocal saved_examples
    example_id = int(batch["example_id"][i])
    if save and not os.path.exists(estimate_path(folder, example_id)):  # resumed: kept as is
      write_estimate(estimate_path(folder, example_id), scored, rate)
    if saved_examples < config.eval.save_examples:
      _save_example_wavs(out_dir, example_id, batch["mixture"][i], references, scored, rate)
      saved_examples += 1

  summary, _ = _score_split(config, out_dir, split=split, shards_dir=shards_dir,
                            progress=progress, estimates_of=model_estimates, keep=keep,
                            oracle_keys=oracle_keys, desc=f"evaluating {split}")
  _write_summary(summary, out_dir)
  summary["out_dir"] = out_dir
  return summary


def _score_split(config, out_dir: str, *, split: str, shards_dir: str | None, progress: bool,
                 estimates_of, keep=None, check=None, oracle_keys=(), desc: str = "evaluating"):
  """The row loop of an evaluation (evaluate_variables, evaluate_estimates): `split` through
  the evaluation loader, one crc'ed row per example and system (the model, then the oracles of
  `config.eval.oracles`) appended to `out_dir`, resuming from the rows already there.

  `estimates_of(batch, wanted, n) -> {i: estimate [N, T] float32}` gives the model's estimate
  of each wanted example index of the batch (task.example's form, before alignment); an index
  it leaves out is skipped for every system (counted, no rows). `check(row)` sees each new
  model row before it is written (it may raise); `keep(batch, i, scored [S, T], references)`
  gets each new model row's estimate as scored (after the PIT permutation `result["perm"]`).
  Returns (summary, examples skipped), the summary not yet written."""
  from data_pipeline import dataset
  from data_pipeline import loader as loader_lib
  shards_dir = shards_dir or dataset.shards_dir(config)
  manifest = dataset.read_manifest(shards_dir)
  loader_lib.check_manifest(config, manifest)
  if split not in manifest["counts"]:
    raise ValueError(f"no split {split!r} in {shards_dir}; use one of {sorted(manifest['counts'])}")
  task = tasks.get(config.eval.task)
  os.makedirs(out_dir, exist_ok=True)
  systems = ["model"] + [f"oracle_{name}" for name in config.eval.get("oracles", ())]
  rows_paths = {name: os.path.join(out_dir, "rows.csv" if name == "model" else f"rows_{name}.csv")
                for name in systems}
  done = {name: {int(r["example_id"]) for r in io_safety.recover_csv(path)}
          for name, path in rows_paths.items()}
  total = manifest["counts"][split]
  if config.eval.max_examples:
    total = min(total, config.eval.max_examples)
  rate = int(config.data.sample_rate)
  vocoder = {} if config.eval.vocoder else None
  num_workers = config.eval.num_workers or os.cpu_count() or 1
  worker = functools.partial(metrics_lib.evaluate_example, rate=rate,
                             metrics=tuple(config.eval.metrics), vocoder_config=vocoder,
                             align=task.align,
                             metric_modules=tuple(config.eval.get("metric_modules", ())))
  pool = metrics_lib.single_threaded_pool(num_workers) if num_workers > 1 else None
  skipped = 0
  already = min(len(d) for d in done.values())
  bar = tqdm(total=total, initial=already, desc=desc, disable=not progress)
  handles, writers = {}, {}
  try:
    loader = loader_lib.make_loader(config, shards_dir, split, train=False,
                                    batch_size=config.eval.batch_size, process_index=0,
                                    process_count=1)
    seen = 0
    for batch in loader:
      n = min(len(batch["mixture"]), total - seen)
      seen += n
      todo = {name: [i for i in range(n) if int(batch["example_id"][i]) not in done[name]]
              for name in systems}
      wanted = sorted(set().union(*todo.values()))
      found = estimates_of(batch, wanted, n)
      skipped += sum(i not in found for i in wanted)
      for name in systems:
        work = []
        for i in todo[name]:
          if i not in found:
            continue
          references, baseline = task.example_references(batch, i, config)
          if name == "model":
            est = found[i]
          else:
            mixture_1d = baseline if baseline.ndim == 1 else baseline[0]
            est = oracles_lib.oracle_estimates(mixture_1d, references, name[len("oracle_"):])
          work.append((i, (est, references, baseline)))
        inputs = [w for _, w in work]
        results = (pool.starmap(worker, inputs) if pool and inputs
                   else [worker(*w) for w in inputs])
        for (i, (est, references, _)), result in zip(work, results):
          row = {"split": split, **_scene_columns(batch, i, manifest.get("noise_kinds", ())),
                 **_metric_columns(result)}
          if oracle_keys and name == "model":
            row["oracle_train_inputs"] = "+".join(oracle_keys)
          if name == "model" and check is not None:
            check(row)
          if name not in writers:
            handles[name], writers[name] = _open_rows(rows_paths[name], list(row))
          writers[name].append(row)
          if name == "model":
            bar.update(1)
            if keep is not None:
              keep(batch, i, np.asarray(est)[result["perm"]], references)
      if seen >= total:
        break
  finally:
    bar.close()
    if pool:
      pool.close()
      pool.join()
    for handle in handles.values():
      handle.close()
  summary = summarize_rows(read_rows(rows_paths["model"]))
  summary["oracles"] = {name: summarize_rows(read_rows(rows_paths[name]))["overall"]
                        for name in systems if name != "model"}
  summary.update(split=split, config=config.name, task=task.name)
  if oracle_keys:
    summary["oracle_train_inputs"] = list(oracle_keys)
    summary["note"] = ORACLE_INPUT_NOTE.format(keys=", ".join(oracle_keys))
  return summary, skipped


def evaluate_estimates(config, estimates_dir: str, out_dir: str, *, split: str | None = None,
                       progress: bool = True) -> dict:
  """Scores estimates saved by an evaluation with `config.eval.save_estimates` (their
  `estimates/` folder) against `split` rendered here from `config` (scenes are seeded by split
  and example index, so example k is the same mixture), with this config's metrics: rows.csv,
  oracle rows and summary in `out_dir` as a normal evaluation writes them, resumable. Examples
  without a saved estimate are skipped and counted (`summary["skipped_without_estimate"]`).
  When the evaluation that saved them left its rows.csv beside the folder, every example both
  score must agree on SI-SDR (else the metric both rows hold) within 0.05 dB, or the data
  rendered here are not the data the estimates were made on (a one-line ValueError)."""
  split = split or config.eval.split
  estimates_dir = os.path.normpath(estimates_dir)
  check_estimates_dir(estimates_dir)
  if os.path.abspath(out_dir) == os.path.abspath(os.path.dirname(estimates_dir)):
    raise ValueError(f"{out_dir} holds the rows of the evaluation that saved these estimates; "
                     "give another output folder")
  oracle_keys = (oracle_inputs(config, models.build_model(config))
                 if config.eval.get("oracle_train_inputs", False) else ())
  rate = int(config.data.sample_rate)
  task = tasks.get(config.eval.task)
  original_path = os.path.join(os.path.dirname(estimates_dir), "rows.csv")
  original = {int(r["example_id"]): r for r in read_rows(original_path)}

  def saved_estimates(batch, wanted, n):
    found = {}
    for i in wanted:
      path = estimate_path(estimates_dir, int(batch["example_id"][i]))
      if os.path.exists(path):
        estimate = read_estimate(path, rate)
        references, _ = task.example_references(batch, i, config)
        if estimate.shape[-1] != references.shape[-1] or len(estimate) < len(references):
          raise ValueError(f"{path} holds {estimate.shape} ([sources, samples]) but example "
                           f"{int(batch['example_id'][i])} of {split} has references of "
                           f"{references.shape}; {_RENDER_FIX}")
        found[i] = estimate
    return found

  def check(row):
    before = original.get(int(row["example_id"]))
    if before is None:
      return
    metric = next((m for m in ("sisdr", *config.eval.metrics)
                   if m in row and isinstance(before.get(m), (int, float))), None)
    if metric is None or not (np.isfinite(row[metric]) and np.isfinite(before[metric])):
      return
    if abs(row[metric] - before[metric]) > MATCH_TOLERANCE_DB:
      raise ValueError(f"the {split} data rendered here differ from the data the estimates in "
                       f"{estimates_dir} were made on: example {row['example_id']} {metric} "
                       f"{row[metric]:.3f} here, {before[metric]:.3f} in {original_path}; "
                       f"{_RENDER_FIX}")

  for row in read_rows(os.path.join(out_dir, "rows.csv")):   # rows of an earlier, resumed run
    check(row)
  summary, skipped = _score_split(config, out_dir, split=split, shards_dir=None,
                                  progress=progress, estimates_of=saved_estimates, check=check,
                                  oracle_keys=oracle_keys, desc=f"rescoring {split}")
  if not summary["num_examples"]:
    raise ValueError(f"none of the {split} examples has an estimate in {estimates_dir} "
                     f"({skipped} without); score the split the estimates were saved from "
                     "(--split) with the config that saved them")
  made_path = os.path.join(os.path.dirname(estimates_dir), "summary.json")
  made = io_safety.read_json(made_path, "summary") if os.path.exists(made_path) else {}
  summary.update({k: made[k] for k in ("checkpoint", "step", "workdir") if k in made})
  summary.update(estimates_from=estimates_dir, skipped_without_estimate=int(skipped),
                 checked_against=original_path if original else None)
  _write_summary(summary, out_dir)
  summary["out_dir"] = out_dir
  return summary


# ------------------------------------------------------------------------------ saved estimates
# Format: one FLAC file per example (channels = the scored sources), PCM_24 integers q with a
# per-source step g stored exactly (JSON floats) in the file's comment: estimate = q * g. The
# step follows the source's own energy, g = 2 * rms * 10^(ESTIMATE_ERROR_DB / 20), so the
# rounding error (at most g / 2 per sample) stays below ESTIMATE_ERROR_DB relative to that
# source's energy at any level (a bound of -95 dB; -99.7..-100.2 dB measured); 24 bits hold
# peaks up to ~45 dB above the RMS, beyond which g grows to peak / (2^23 - 1). FLAC's linear
# prediction then spends only the bits the signal needs. Measured, 100 two-second 16-kHz
# one-source estimates: 5.2 MB of eSpeak speech at levels 0..-40 dB, 5.7 MB with -20 dB of
# residual interference and a -60 dB noise floor, 6.8 MB of white noise (the worst case).
# Rejected: float16 in a compressed .npz (5.2 MB, but its 11-bit mantissa leaves -73.6 dB of
# error) and float32 .npz (lossless, 10.3 MB: zlib barely compresses floats). One file per
# example, written whole (temporary + rename), so a killed evaluation leaves none half made.
ESTIMATES_FOLDER = "estimates"
ESTIMATE_EXTENSION = ".flac"
ESTIMATE_ERROR_DB = -95.0
MATCH_TOLERANCE_DB = 0.05
_FULL_SCALE = 2 ** 23 - 1
_RENDER_FIX = ("render the split with the same config (data.*) and seed as the run that saved "
               "them, e.g. --config of that run")


def check_estimates_dir(estimates_dir: str) -> None:
  """A one-line ValueError unless `estimates_dir` holds saved estimates."""
  if not os.path.isdir(estimates_dir) or not any(
      name.endswith(ESTIMATE_EXTENSION) and not name.startswith(".")
      for name in os.listdir(estimates_dir)):
    raise ValueError(f"no saved estimates in {estimates_dir}; make them with an evaluation run "
                     "with --config.eval.save_estimates=True (it writes <its eval folder>/"
                     f"{ESTIMATES_FOLDER}/<example_id>{ESTIMATE_EXTENSION})")


def estimate_path(folder: str, example_id: int) -> str:
  return os.path.join(folder, f"{int(example_id):05d}{ESTIMATE_EXTENSION}")


def write_estimate(path: str, estimate, rate: int) -> None:
  """Saves one scored estimate ([S, T] or [T]) atomically in the format above."""
  import soundfile
  estimate = np.atleast_2d(np.asarray(estimate, np.float64))
  if len(estimate) > 8:
    raise ValueError(f"{len(estimate)} sources do not fit a FLAC file (8 channels at most); "
                     "turn config.eval.save_estimates off for this model")
  finite = np.isfinite(estimate).all(axis=1)
  safe = np.where(finite[:, None], estimate, 0.0)
  rms = np.sqrt(np.mean(safe ** 2, axis=1))
  peak = np.abs(safe).max(axis=1, initial=0.0)
  steps = np.maximum(2.0 * rms * 10.0 ** (ESTIMATE_ERROR_DB / 20.0), peak / _FULL_SCALE)
  steps = np.where(steps > 0, steps, 1.0)
  q = np.clip(np.round(safe / steps[:, None]), -_FULL_SCALE, _FULL_SCALE).astype(np.int32)
  # Non-finite sources (a diverged model) are stored as zeros with a step of NaN: read back NaN.
  meta = {"steps": [float(g) if ok else "nan" for g, ok in zip(steps, finite)],
          "error_bound_db": ESTIMATE_ERROR_DB}
  with io_safety.atomic_path(path) as temporary:
    with soundfile.SoundFile(temporary, "w", int(rate), len(q), "PCM_24", format="FLAC",
                             compression_level=1.0) as f:
      f.comment = json.dumps(meta)
      f.write((q.T << 8).astype(np.int32))   # int32 full scale: the top 24 bits are q


def read_estimate(path: str, rate: int | None = None) -> np.ndarray:
  """A saved estimate as [S, T] float32 (`write_estimate`); `rate` checks its sample rate."""
  import soundfile
  try:
    with soundfile.SoundFile(path) as f:
      meta = json.loads(f.comment or "{}")
      file_rate = f.samplerate
      q = f.read(dtype="int32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a saved estimate ({' '.join(str(e).split())}); delete it "
                     "and evaluate again with eval.save_estimates=True") from None
  if "steps" not in meta or len(meta["steps"]) != q.shape[1]:
    raise ValueError(f"{path} has no per-source steps in its comment: not written by "
                     "evaluation.write_estimate; delete it and evaluate again")
  if rate is not None and file_rate != int(rate):
    raise ValueError(f"{path} is at {file_rate} Hz but this config's data are at {rate} Hz; "
                     "rescore with the config that saved the estimates")
  steps = np.array([float(g) for g in meta["steps"]], np.float64)
  return ((q >> 8).T.astype(np.float64) * steps[:, None]).astype(np.float32)


def _remove_stale_temporaries(folder: str) -> None:
  """Temporary files a killed evaluation left (`.<name>.<random>.tmp.flac`)."""
  if not os.path.isdir(folder):
    return
  for name in os.listdir(folder):
    if name.startswith(".") and name.endswith(".tmp" + ESTIMATE_EXTENSION):
      try:
        os.remove(os.path.join(folder, name))
      except OSError:
        pass


def evaluate_pretrained(name: str, config, out_root: str, *, split: str | None = None,
                        progress: bool = True) -> dict:
  """Scores the shipped model `pretrained/<name>` on `config`'s data (its test split unless
  `split`), with `config`'s evaluation settings; rows and summary in
  `<out_root>/eval/pretrained-<name>-<split>/`."""
  from spatialsep_jax import separator as separator_lib
  separator = separator_lib.Separator.from_pretrained(name)
  model_config = separator.config
  if tuple(model_config.data.input_channels) != tuple(config.data.input_channels):
    raise ValueError(f"pretrained/{name} takes {tuple(model_config.data.input_channels)}, this "
                     f"data config gives {tuple(config.data.input_channels)}; pick a pretrained "
                     "model of the same channels")
  scored = config.copy_and_resolve_references()
  scored.model = model_config.model
  split = split or config.eval.split
  out_dir = os.path.join(out_root, "eval", f"pretrained-{name}-{split}")
  summary = evaluate_variables(scored, {"params": separator.params}, out_dir, split=split,
                               progress=progress)
  summary.update(checkpoint=f"pretrained/{name}", config=f"pretrained {name}", step="as shipped")
  _write_summary(summary, out_dir)
  summary["out_dir"] = out_dir
  return summary


def pretrained_for(config) -> str | None:
  """The shipped model of the same configuration name, if one ships."""
  from spatialsep_jax import separator as separator_lib
  return config.name if config.name in separator_lib.pretrained_names() else None


def _write_summary(summary: dict, out_dir: str) -> None:
  summary = {k: v for k, v in summary.items() if k != "out_dir"}
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(summary_markdown(summary))
  plot_breakdowns(summary, os.path.join(out_dir, "sisdri_by_condition.png"))


def _save_example_wavs(out_dir, example_id, mixture, references, estimates, rate):
  import soundfile
  folder = os.path.join(out_dir, "examples")
  os.makedirs(folder, exist_ok=True)
  mixture, references = np.asarray(mixture, np.float32), np.asarray(references, np.float32)
  peak = max(np.abs(mixture).max(), 1e-9)
  soundfile.write(os.path.join(folder, f"{example_id:05d}_mixture.wav"), mixture / peak * 0.9, rate)
  for s, (ref, est) in enumerate(zip(references, estimates)):
    for name, audio in (("reference", ref), ("estimate", est)):
      audio = audio / max(np.abs(audio).max(), 1e-9) * 0.9
      soundfile.write(os.path.join(folder, f"{example_id:05d}_s{s}_{name}.wav"), audio, rate)


def mean_ci(values) -> dict:
  """{"mean", "ci95": [lo, hi], "n"} of values (Student t, nan ignored)."""
  mean, lo, hi = metrics_lib.mean_ci95(values)
  return {"mean": mean, "ci95": [lo, hi], "n": int(np.sum(np.isfinite(np.asarray(values, float))))}


def binned(rows, key, bins):
  """{bin name: rows with lo <= row[key] < hi} for (name, lo, hi) in bins."""
  return {name: [r for r in rows if lo <= float(r[key]) < hi] for name, lo, hi in bins}


def summarize_rows(rows: list[dict]) -> dict:
  """Means with 95% CIs: overall and per condition of the study."""
  metrics = [m for m in SUMMARY_METRICS if rows and m in rows[0]]

  def stats(subset):
    return {m: mean_ci([r[m] for r in subset]) for m in metrics} if subset else {}

  has = lambda key: bool(rows) and key in rows[0]
  groups = {}
  if has("separation_deg"):
    groups["separation"] = binned(rows, "separation_deg", SEPARATION_BINS)
  if has("front_back_confusable"):
    groups["front_back"] = {
        "cone of confusion": [r for r in rows if r["front_back_confusable"]],
        "distinct lateral angles": [r for r in rows if not r["front_back_confusable"]]}
  if has("sex_pair"):
    groups["sex_pair"] = {p: [r for r in rows if r["sex_pair"] == p]
                          for p in ("female-male", "same-sex", "unknown")}
  if has("f0_distance_semitones"):
    groups["f0_distance"] = binned(
        [r for r in rows if np.isfinite(r["f0_distance_semitones"])], "f0_distance_semitones",
        F0_BINS)
  if has("rt60"):
    groups["rt60"] = binned(rows, "rt60", RT60_BINS)
  if has("tir_db"):
    groups["tir"] = binned(rows, "tir_db", TIR_BINS)
  noisy = [r for r in rows if np.isfinite(r.get("snr_db", math.inf))]
  if noisy:
    groups["snr"] = binned(noisy, "snr_db", SNR_BINS)
  if has("noise_kind"):
    groups["noise_kind"] = {kind: [r for r in rows if r["noise_kind"] == kind]
                            for kind in sorted({r["noise_kind"] for r in rows})}
  return {"num_examples": len(rows), "overall": stats(rows),
          "breakdowns": {g: {name: stats(subset) for name, subset in bins.items() if subset}
                         for g, bins in groups.items()}}


def summary_markdown(summary: dict) -> str:
  def cell(entry):
    if not entry or not np.isfinite(entry["mean"]):
      return "n/a"
    lo, hi = entry["ci95"]
    return f"{entry['mean']:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else f"{entry['mean']:.2f}"

  shown = [m for m in ("sisdr_improvement", "sdr_improvement", "stoi_improvement",
                       "pesq_improvement", "vocoded_sisdr_improvement")
           if m in summary["overall"]]
  header = "| condition | n | " + " | ".join(shown) + " |\n|" + " --- |" * (len(shown) + 2)
  lines = [f"# Evaluation of {summary.get('config')} ({summary.get('split')} split, "
           f"{summary.get('checkpoint')} checkpoint, step {summary.get('step')})\n",
           "Means with 95% confidence intervals (Student t) over mixtures; improvements are "
           "over the unprocessed mixture at the reference microphone.\n", header]
  if summary.get("estimates_from"):
    lines.insert(1, f"Scored from the estimates saved in `{summary['estimates_from']}` (examples "
                 f"without one skipped: {summary.get('skipped_without_estimate', 0)}).\n")
  if summary.get("oracle_train_inputs"):
    lines.insert(1, "**" + ORACLE_INPUT_NOTE.format(
        keys=", ".join(summary["oracle_train_inputs"])) + ".**\n")
  lines.append(f"| all | {summary['num_examples']} | "
               + " | ".join(cell(summary["overall"].get(m)) for m in shown) + " |")
  for name, overall in summary.get("oracles", {}).items():
    n = next(iter(overall.values()))["n"] if overall else 0
    label = {"oracle_ibm": "oracle: ideal binary mask", "oracle_irm": "oracle: ideal ratio mask"}
    lines.append(f"| {label.get(name, name)} (best mask on the mixture STFT) | {n} | "
                 + " | ".join(cell(overall.get(m)) for m in shown) + " |")
  for group, bins in summary["breakdowns"].items():
    for name, stats in bins.items():
      n = next(iter(stats.values()))["n"] if stats else 0
      lines.append(f"| {group}: {name} | {n} | "
                   + " | ".join(cell(stats.get(m)) for m in shown) + " |")
  return "\n".join(lines) + "\n"


def plot_breakdowns(summary: dict, path: str, metric: str = "sisdr_improvement") -> None:
  from spatialsep_jax import extras
  if not extras.available("matplotlib", "plots", f"the plot {path}"):
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = [g for g in summary["breakdowns"] if summary["breakdowns"][g]]
  fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), sharey=True)
  for ax, group in zip(np.atleast_1d(axes), groups):
    bins = summary["breakdowns"][group]
    names = [n for n in bins if metric in bins[n]]
    means = [bins[n][metric]["mean"] for n in names]
    errs = [[m - bins[n][metric]["ci95"][0] for n, m in zip(names, means)],
            [bins[n][metric]["ci95"][1] - m for n, m in zip(names, means)]]
    errs = np.nan_to_num(np.asarray(errs))
    ax.bar(range(len(names)), means, yerr=errs, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
    ax.set_title(group, fontsize=9)
  np.atleast_1d(axes)[0].set_ylabel(f"{metric} (dB)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
