"""Test-split evaluation: one row per mixture (all metrics + scene metadata), resumable,
and a summary with 95% confidence intervals broken down by the study's conditions.

Rows are appended to ``rows.csv`` as each mixture finishes, so an interrupted
evaluation resumes from the rows already written.
"""

import csv
import functools
import json
import math
import multiprocessing
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from spatialsep_jax import checkpoint as checkpoint_lib
from spatialsep_jax import metrics as metrics_lib
from spatialsep_jax import train as train_lib

# Breakdowns of the study (bins are [lo, hi) except the last, which is closed).
SEPARATION_BINS = (("co-located (<=15 deg)", 0.0, 15.001), ("near (15-60 deg)", 15.001, 60.0),
                   ("far (>=60 deg)", 60.0, 180.001))
RT60_BINS = (("RT60 < 0.4 s", 0.0, 0.4), ("RT60 0.4-0.6 s", 0.4, 0.6), ("RT60 >= 0.6 s", 0.6, 99.0))
TIR_BINS = (("TIR < -2 dB", -99.0, -2.0), ("TIR -2..2 dB", -2.0, 2.0), ("TIR >= 2 dB", 2.0, 99.0))
F0_BINS = (("F0 distance < 2 st", 0.0, 2.0), ("F0 distance 2-6 st", 2.0, 6.0),
           ("F0 distance >= 6 st", 6.0, 99.0))
SUMMARY_METRICS = ("sisdr_improvement", "sdr_improvement", "stoi_improvement", "pesq_improvement",
                   "sisdr", "sdr", "stoi", "pesq", "vocoded_sisdr_improvement",
                   "vocoded_stoi_improvement", "vocoded_stoi")


def make_separate_fn(config, model):
  """jitted (params, mixture [B, T, C]) -> estimates [B, S + extra, T] float32."""
  return jax.jit(lambda params, mixture: model.apply(
      {"params": params}, mixture.astype(jnp.float32)).astype(jnp.float32))


def load_trained(config, workdir: str, which: str = "best"):
  """(programs, params, step) of a trained run; errors name the fix."""
  programs = train_lib.build_programs(config)
  abstract = jax.eval_shape(programs.init, jax.random.key(config.seed))
  try:
    state, meta, step = checkpoint_lib.restore_params(workdir, abstract, which)
  except (ValueError, KeyError) as e:
    raise ValueError(f"the checkpoint in {workdir} does not match this config ({e}); pass the "
                     "--config the run was trained with") from None
  saved = meta.get("config_fingerprint")
  if saved and saved != train_lib.config_fingerprint(config):
    raise ValueError(f"the checkpoint in {workdir} was trained with another configuration; pass "
                     f"the --config of that run (see {workdir}/config.json)")
  return programs, state.params, step


def _scene_columns(batch: dict, i: int) -> dict:
  az = batch["azimuth_deg"][i]
  sex = batch["speaker_sex"][i]
  f0 = batch["f0_hz"][i]
  lateral = np.degrees(np.arcsin(np.sin(np.radians(az))))
  with np.errstate(invalid="ignore", divide="ignore"):
    f0_distance = float(abs(12 * np.log2(f0[0] / f0[1]))) if np.all(f0 > 0) else math.nan
  separation = float(batch["separation_deg"][i])
  return {
      "example_id": int(batch["example_id"][i]),
      "azimuth_0": float(az[0]), "azimuth_1": float(az[1]),
      "separation_deg": separation,
      # Mirror images about the interaural axis share ITD/ILD: the cone of confusion.
      "front_back_confusable": bool(abs(lateral[0] - lateral[1]) <= 15.0 and separation > 15.0),
      "rt60": float(batch["rt60"][i]), "tir_db": float(batch["tir_db"][i]),
      "snr_db": float(batch["snr_db"][i]),
      "drr_db_0": float(batch["drr_db"][i][0]), "drr_db_1": float(batch["drr_db"][i][1]),
      "speaker_0": int(batch["speaker_index"][i][0]),
      "speaker_1": int(batch["speaker_index"][i][1]),
      "sex_pair": _sex_pair(sex), "f0_distance_semitones": f0_distance,
  }


def _sex_pair(sex) -> str:
  if np.any(np.asarray(sex) < 0):
    return "unknown"
  return "same-sex" if sex[0] == sex[1] else "female-male"


def _metric_columns(result: dict) -> dict:
  """Per-mixture values: the mean over sources of each metric."""
  return {k: float(np.nanmean(v)) if np.any(np.isfinite(v)) else math.nan
          for k, v in result.items() if k != "perm"}


def read_rows(path: str) -> list[dict]:
  """The rows of a rows.csv (values parsed back to numbers and booleans); [] when missing."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return [{k: _parse(v) for k, v in row.items()} for row in rows]


def _parse(value: str):
  if value in ("True", "False"):
    return value == "True"
  try:
    return float(value) if any(c in value for c in ".en") else int(value)
  except ValueError:
    return value


def run_evaluation(config, workdir: str, *, which: str = "best", split: str | None = None,
                   shards_dir: str | None = None, progress: bool = True) -> dict:
  """Evaluates a trained run on `split`; returns the summary (also written to disk)."""
  from data_pipeline import dataset
  from data_pipeline import loader as loader_lib

  split = split or config.eval.split
  shards_dir = shards_dir or dataset.shards_dir(config)
  manifest = dataset.read_manifest(shards_dir)
  loader_lib.check_manifest(config, manifest)
  programs, params, step = load_trained(config, workdir, which)
  separate = make_separate_fn(config, programs.model)
  out_dir = os.path.join(workdir, "eval", f"{split}-{which}-step{step}")
  os.makedirs(out_dir, exist_ok=True)
  rows_path = os.path.join(out_dir, "rows.csv")
  done = {int(r["example_id"]) for r in read_rows(rows_path)}
  total = manifest["counts"][split]
  if config.eval.max_examples:
    total = min(total, config.eval.max_examples)
  rate = int(config.data.sample_rate)
  vocoder = {} if config.eval.vocoder else None
  num_workers = config.eval.num_workers or os.cpu_count() or 1
  worker = functools.partial(metrics_lib.evaluate_example, rate=rate,
                             metrics=tuple(config.eval.metrics), vocoder_config=vocoder)
  pool = metrics_lib.single_threaded_pool(num_workers) if num_workers > 1 else None
  saved_examples = 0
  bar = tqdm(total=total, initial=len(done), desc=f"evaluating {split}", disable=not progress)
  writer, handle = None, None
  try:
    loader = loader_lib.make_loader(config, shards_dir, split, train=False,
                                    batch_size=config.eval.batch_size, process_index=0,
                                    process_count=1)
    seen = 0
    for batch in loader:
      n = min(len(batch["mixture"]), total - seen)
      seen += n
      todo = [i for i in range(n) if int(batch["example_id"][i]) not in done]
      if todo:
        estimates = np.asarray(separate(params, jnp.asarray(batch["mixture"])))
        # data.host_audio_dtype may hand float16 over; metrics and wavs work in float32.
        work = [(estimates[i], batch["sources"][i].astype(np.float32),
                 batch["mixture_reference"][i].astype(np.float32)) for i in todo]
        results = (pool.starmap(worker, work) if pool else [worker(*w) for w in work])
        for i, result in zip(todo, results):
          row = {"split": split, **_scene_columns(batch, i), **_metric_columns(result)}
          if writer is None:
            new_file = not os.path.exists(rows_path) or os.path.getsize(rows_path) == 0
            handle = open(rows_path, "a", newline="")
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new_file:
              writer.writeheader()
          writer.writerow(row)
          handle.flush()
          os.fsync(handle.fileno())
          bar.update(1)
          if saved_examples < config.eval.save_examples:
            _save_example_wavs(out_dir, row["example_id"], batch["mixture"][i],
                               batch["sources"][i], estimates[i][result["perm"]], rate)
            saved_examples += 1
      if seen >= total:
        break
  finally:
    bar.close()
    if pool:
      pool.close()
      pool.join()
    if handle:
      handle.close()
  summary = summarize_rows(read_rows(rows_path))
  summary.update(split=split, checkpoint=which, step=int(step), workdir=workdir,
                 config=config.name)
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(summary_markdown(summary))
  plot_breakdowns(summary, os.path.join(out_dir, "sisdri_by_condition.png"))
  summary["out_dir"] = out_dir
  return summary


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

  groups = {
      "separation": binned(rows, "separation_deg", SEPARATION_BINS),
      "front_back": {"cone of confusion": [r for r in rows if r["front_back_confusable"]],
                     "distinct lateral angles": [r for r in rows
                                                 if not r["front_back_confusable"]]},
      "sex_pair": {p: [r for r in rows if r["sex_pair"] == p]
                   for p in ("female-male", "same-sex", "unknown")},
      "f0_distance": binned([r for r in rows if np.isfinite(r["f0_distance_semitones"])],
                             "f0_distance_semitones", F0_BINS),
      "rt60": binned(rows, "rt60", RT60_BINS),
      "tir": binned(rows, "tir_db", TIR_BINS),
  }
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
  header = "| condition | n | " + " | ".join(shown) + " |\n|" + " --- |" * (len(shown) + 2) + "\n"
  lines = [f"# Evaluation of {summary.get('config')} ({summary.get('split')} split, "
           f"{summary.get('checkpoint')} checkpoint, step {summary.get('step')})\n",
           "Means with 95% confidence intervals (Student t) over mixtures; improvements are "
           "over the unprocessed mixture at the reference microphone.\n", header]
  lines.append(f"| all | {summary['num_examples']} | "
               + " | ".join(cell(summary["overall"].get(m)) for m in shown) + " |")
  for group, bins in summary["breakdowns"].items():
    for name, stats in bins.items():
      n = next(iter(stats.values()))["n"] if stats else 0
      lines.append(f"| {group}: {name} | {n} | "
                   + " | ".join(cell(stats.get(m)) for m in shown) + " |")
  return "\n".join(lines) + "\n"


def plot_breakdowns(summary: dict, path: str, metric: str = "sisdr_improvement") -> None:
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
