"""The study report: one markdown page and PNG plots comparing trained configurations.

Reads, for each configuration folder of a study (`launch/study.py`): `config.json`,
`train_summary.json`, `logs/metrics.jsonl` and the newest `eval/*/summary.json`.
"""

import glob
import json
import os

import numpy as np

BREAKDOWN_METRIC = "sisdr_improvement"

# (A, B, what A - B tests): per-mixture differences on the same test mixtures, which
# resolve far smaller effects than comparing two configurations' own confidence intervals.
PAIRED_COMPARISONS = (
    ("bilateral", "mono", "implicit cues: two T-mics vs one (finding 1)"),
    ("unilateral", "mono", "implicit cues: one CI's back mic + T-mic vs one mic (findings 1, 5)"),
    ("bilateral", "unilateral", "bilateral vs unilateral channel pair (finding 5)"),
    ("ipd", "bilateral", "explicit IPD over the same two channels (findings 2, 3)"),
    ("ild", "bilateral", "explicit ILD over the same two channels (finding 2)"),
    ("ild_ipd", "bilateral", "explicit IPD+ILD over the same two channels (finding 2)"),
    ("ipd", "ild", "IPD vs ILD (finding 2)"),
    ("ipd", "ild_ipd", "IPD vs IPD+ILD (finding 2)"),
    ("ipd", "mono", "IPD model vs one channel (findings 3, 4)"),
    ("ipd_af", "ipd", "attention fusion vs concatenation of the IPD map"),
    ("ipd_uni", "unilateral", "explicit IPD over one CI's back mic + T-mic (finding 5)"),
    ("ipd_sepnorm", "ipd", "IPD map normalised on its own vs the study's joint norm"),
    ("ild_ipd_sepnorm", "ild_ipd", "IPD+ILD map normalised on its own vs the joint norm"),
    ("ipd_sepnorm", "bilateral", "explicit IPD, own norm, over the same two channels"),
)


def _load_run(folder: str) -> dict | None:
  if not os.path.exists(os.path.join(folder, "config.json")):
    return None
  run = {"folder": folder, "config": json.load(open(os.path.join(folder, "config.json")))}
  summary_path = os.path.join(folder, "train_summary.json")
  run["train"] = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
  evals = sorted(glob.glob(os.path.join(folder, "eval", "*", "summary.json")), key=os.path.getmtime)
  run["eval"] = json.load(open(evals[-1])) if evals else None
  run["eval_dir"] = os.path.dirname(evals[-1]) if evals else None
  metrics_path = os.path.join(folder, "logs", "metrics.jsonl")
  run["curve"] = ([json.loads(line) for line in open(metrics_path) if line.strip()]
                  if os.path.exists(metrics_path) else [])
  return run


def _efficiency(config_dict: dict) -> tuple[int, float]:
  """(parameters, forward GFLOP per second of audio) of a configuration at its own size."""
  import ml_collections
  from spatialsep_jax import models
  config = ml_collections.ConfigDict(config_dict)
  import jax
  import jax.numpy as jnp
  model = models.build_model(config)
  mixture = jnp.zeros((1, int(config.data.sample_rate), model.num_input_channels))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), mixture))
  params = models.count_params(variables["params"])
  return params, models.flops_per_second_of_audio(config) / 1e9


def _fmt(entry: dict | None, digits: int = 2) -> str:
  if not entry or entry.get("mean") is None or not np.isfinite(entry["mean"]):
    return "n/a"
  lo, hi = entry["ci95"]
  if np.isfinite(lo):
    return f"{entry['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
  return f"{entry['mean']:.{digits}f}"


def _latencies(patterns: tuple[str, ...], variant: str) -> dict:
  """{config: {device (dtype): ms per second of audio}} from benchmark results files, for the
  configurations at the study's size variant."""
  table = {}
  for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
    for line in open(path):
      row = json.loads(line)
      if row.get("benchmark") == "latency" and row.get("variant") == variant:
        table.setdefault(row["config"], {})[f"{row['device']} ({row['dtype']})"] = \
            row["ms_per_audio_s"]
  return table


def build_report(root: str, out_dir: str, names: list[str], variant: str = "",
                 benchmark_files: tuple[str, ...] = ("benchmarks/*/results.jsonl",)) -> str:
  os.makedirs(out_dir, exist_ok=True)
  runs = {name: _load_run(os.path.join(root, name)) for name in names}
  runs = {name: run for name, run in runs.items() if run is not None}
  lines = ["# Spatial cues study: results", "",
           f"Runs in `{root}`; each configuration trained with the same data, seed and budget "
           "(see each run's `config.json`). Test figures are means with 95% CIs over mixtures.", ""]
  lines += ["| config | input channels | features | fusion | params | GFLOP/s audio | steps | "
            "best val SI-SDRi | test SI-SDRi | test SDRi | test STOI i | test PESQ i | "
            "vocoded SI-SDRi |", "|" + " --- |" * 13]
  for name, run in runs.items():
    cfg = run["config"]["config"]
    params, gflops = _efficiency(cfg)
    run["params"], run["gflops"] = params, gflops
    overall = (run["eval"] or {}).get("overall", {})
    best = run["train"].get("best", {})
    lines.append(
        f"| {name} | {', '.join(cfg['data']['input_channels'])} | "
        f"{', '.join(cfg['model'].get('features', ())) or '-'} | "
        f"{cfg['model'].get('fusion', cfg['model']['name'])} | {params:,} | "
        f"{gflops:.2f} | {run['train'].get('step', 'n/a')} | "
        f"{best.get('val_sisdri', float('nan')):.2f} | {_fmt(overall.get('sisdr_improvement'))} | "
        f"{_fmt(overall.get('sdr_improvement'))} | {_fmt(overall.get('stoi_improvement'), 3)} | "
        f"{_fmt(overall.get('pesq_improvement'))} | "
        f"{_fmt(overall.get('vocoded_sisdr_improvement'))} |")
  lines.append("")
  for group, title in (("separation", "angular separation of the talkers"),
                       ("front_back", "front-back (cone of confusion)"),
                       ("sex_pair", "voice similarity: sex pairing"),
                       ("f0_distance", "voice similarity: F0 distance"),
                       ("rt60", "reverberation"), ("tir", "target-to-interferer ratio")):
    bins = []
    for run in runs.values():
      for name in ((run["eval"] or {}).get("breakdowns", {}).get(group, {})):
        if name not in bins:
          bins.append(name)
    if not bins:
      continue
    lines += [f"### Test SI-SDRi (dB) by {title}", "",
              "| config | " + " | ".join(bins) + " |", "|" + " --- |" * (len(bins) + 1)]
    for name, run in runs.items():
      groups = (run["eval"] or {}).get("breakdowns", {}).get(group, {})
      lines.append(f"| {name} | " + " | ".join(
          _fmt(groups.get(b, {}).get(BREAKDOWN_METRIC)) + f" (n={groups.get(b, {}).get(BREAKDOWN_METRIC, {}).get('n', 0)})"
          for b in bins) + " |")
    lines.append("")
  lines += _paired_section(runs)
  latencies = _latencies(benchmark_files, variant)
  devices = sorted({d for name in runs for d in latencies.get(name, {})})
  if devices:
    lines += ["### Latency: forward pass of one mixture, ms per second of audio "
              "(`launch/benchmark.py --what=latency`)", "",
              "| config | params | GFLOP/s audio | " + " | ".join(devices) + " |",
              "|" + " --- |" * (len(devices) + 3)]
    for name, run in runs.items():
      cells = [f"{latencies[name][d]:.2f}" if d in latencies.get(name, {}) else "not measured"
               for d in devices]
      lines.append(f"| {name} | {run['params']:,} | {run['gflops']:.2f} | " + " | ".join(cells)
                   + " |")
    lines.append("")
  figures = _plots(runs, out_dir)
  spectrograms = _spectrograms(runs, out_dir)
  if spectrograms:
    figures.append(("example spectrograms", spectrograms))
  lines += [f"![{title}]({os.path.basename(path)})" for title, path in figures]
  path = os.path.join(out_dir, "README.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def _rows(run: dict) -> dict[int, dict]:
  from spatialsep_jax import evaluation
  path = os.path.join(run["eval_dir"] or "", "rows.csv")
  return {int(r["example_id"]): r for r in evaluation.read_rows(path)}


def paired_differences(rows_a: dict[int, dict], rows_b: dict[int, dict],
                       metric: str = BREAKDOWN_METRIC) -> dict[str, dict]:
  """Mean A - B of `metric` with 95% CI over the mixtures both evaluated: overall, per
  angular-separation bin and per sex pairing (rows keyed by example_id)."""
  from spatialsep_jax import evaluation
  shared = sorted(set(rows_a) & set(rows_b))
  subsets = {"all": shared}
  binned = evaluation.binned([rows_a[i] for i in shared], "separation_deg",
                              evaluation.SEPARATION_BINS)
  subsets.update({name: [int(r["example_id"]) for r in rows] for name, rows in binned.items()})
  for pair in ("same-sex", "female-male"):
    subsets[pair] = [i for i in shared if rows_a[i].get("sex_pair") == pair]  # none: one talker
  out = {}
  for name, ids in subsets.items():
    if ids and metric in rows_a[ids[0]] and metric in rows_b[ids[0]]:
      out[name] = evaluation.mean_ci([float(rows_a[i][metric]) - float(rows_b[i][metric])
                                  for i in ids])
  return out


def _paired_section(runs: dict) -> list[str]:
  rows = {name: _rows(run) for name, run in runs.items() if run.get("eval_dir")}
  table = []
  for a, b, what in PAIRED_COMPARISONS:
    if rows.get(a) and rows.get(b):
      table.append((a, b, what, paired_differences(rows[a], rows[b]),
                    paired_differences(rows[a], rows[b], "vocoded_sisdr_improvement")))
  if not table:
    return []
  from spatialsep_jax import evaluation
  columns = (["all"] + [name for name, _, _ in evaluation.SEPARATION_BINS]
             + ["same-sex", "female-male"])
  lines = ["### Paired differences in test SI-SDRi (dB), A - B on the same mixtures", "",
           "Mean [95% CI] (n) of per-mixture differences; an interval that excludes 0 is an "
           "effect at this scale. Last column: the same after the CI vocoder.", "",
           "| A - B | tests | " + " | ".join(columns) + " | vocoded, all |",
           "|" + " --- |" * (len(columns) + 3)]
  for a, b, what, diffs, vocoded in table:
    cells = [(_fmt(diffs[c]) + f" ({diffs[c]['n']})") if c in diffs else "n/a" for c in columns]
    lines.append(f"| {a} - {b} | {what} | " + " | ".join(cells) + f" | {_fmt(vocoded.get('all'))} |")
  return lines + [""]


def _plots(runs: dict, out_dir: str) -> list[tuple[str, str]]:
  from spatialsep_jax import extras
  if not extras.available("matplotlib", "plots", "the study report's plots"):
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figures = []
  names = [n for n, r in runs.items() if r["eval"]]
  if names:
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    means = [runs[n]["eval"]["overall"][BREAKDOWN_METRIC]["mean"] for n in names]
    cis = [runs[n]["eval"]["overall"][BREAKDOWN_METRIC]["ci95"] for n in names]
    err = np.nan_to_num([[m - c[0] for m, c in zip(means, cis)], [c[1] - m for m, c in zip(means, cis)]])
    ax.bar(range(len(names)), means, yerr=err, capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test SI-SDRi (dB)")
    fig.tight_layout()
    figures.append(("SI-SDRi per configuration", os.path.join(out_dir, "sisdri_per_config.png")))
    fig.savefig(figures[-1][1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in names:
      groups = runs[n]["eval"]["breakdowns"].get("separation", {})
      keys = list(groups)
      ax.plot(range(len(keys)), [groups[k][BREAKDOWN_METRIC]["mean"] for k in keys], marker="o",
              label=n)
      ax.set_xticks(range(len(keys)), keys, fontsize=8)
    ax.set_ylabel("test SI-SDRi (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figures.append(("SI-SDRi vs angular separation",
                    os.path.join(out_dir, "sisdri_vs_separation.png")))
    fig.savefig(figures[-1][1], dpi=110)
    plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for n, run in runs.items():
    train_rows = [r for r in run["curve"] if "loss" in r]
    val_rows = [r for r in run["curve"] if "val_sisdri" in r]
    if train_rows:
      axes[0].plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label=n, lw=0.8)
    if val_rows:
      axes[1].plot([r["step"] for r in val_rows], [r["val_sisdri"] for r in val_rows], marker=".",
                   label=n)
  axes[0].set(xlabel="step", ylabel="train loss (-SI-SDR, dB)")
  axes[1].set(xlabel="step", ylabel="val SI-SDRi (dB)")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  figures.append(("training curves", os.path.join(out_dir, "training_curves.png")))
  fig.savefig(figures[-1][1], dpi=110)
  plt.close(fig)
  return figures


def _spectrograms(runs: dict, out_dir: str) -> str | None:
  """Mixture, reference and estimate spectrograms of one saved test example per run."""
  from spatialsep_jax import extras
  if not extras.available("matplotlib", "plots", "the study report's spectrograms"):
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import scipy.signal
  import soundfile
  examples = {}
  for name, run in runs.items():
    folder = os.path.join(run["eval_dir"] or "", "examples")
    mixtures = sorted(glob.glob(os.path.join(folder, "*_mixture.wav")))
    if mixtures:
      stem = mixtures[0][:-len("_mixture.wav")]
      examples[name] = [stem + suffix for suffix in
                        ("_mixture.wav", "_s0_reference.wav", "_s0_estimate.wav")]
  if not examples:
    return None
  fig, axes = plt.subplots(len(examples), 3, figsize=(11, 2.4 * len(examples)), squeeze=False)
  for row, (name, paths) in enumerate(examples.items()):
    for col, (path, title) in enumerate(zip(paths, ("mixture (first channel)", "reference, talker 1",
                                                     "estimate, talker 1"))):
      audio, rate = soundfile.read(path, always_2d=True)
      f, t, spec = scipy.signal.spectrogram(audio[:, 0], rate, nperseg=256, noverlap=192)
      axes[row, col].pcolormesh(t, f, 10 * np.log10(spec + 1e-10), shading="auto", cmap="magma")
      axes[row, col].set_title(f"{name}: {title}", fontsize=8)
  fig.tight_layout()
  path = os.path.join(out_dir, "spectrograms.png")
  # Noise-like spectrogram images compress poorly: keep the file near 1 MB for any number
  # of runs by lowering the resolution beyond six rows.
  fig.savefig(path, dpi=max(45, round(90 * min(1.0, 6 / len(examples)))))
  plt.close(fig)
  return path
