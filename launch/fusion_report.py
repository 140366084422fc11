"""Tables of the fusion study (reports/fusion/README.md) from the runs' test rows.

  python launch/fusion_report.py --runs=<folder of fusion_<topology>_<encoder> runs> \\
      [--variances=variances.json] > tables.md
  python launch/fusion_report.py --rows_dir=reports/fusion/rows \\
      --variances=reports/fusion/variances.json         # the committed study

Per run: means with 95% CIs (Student t over test mixtures) of the per-ear and binaural metrics.
Paired comparisons (same test mixtures, differences per mixture, then mean and 95% CI): every
fused topology minus `independent` of the same encoder; `learned` minus `stft` per topology.
With --variances (launch/fusion_probe.py): per stage, the left/right activation-variance ratio
in dB, |10 log10(var_left / var_right)|, at initialisation and after training.
"""

import glob
import json
import os

import numpy as np
from absl import app, flags

from spatialsep_jax import evaluation, metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", "runs/fusion", "folder of run folders")
flags.DEFINE_string("variances", "", "launch/fusion_probe.py output (optional)")
flags.DEFINE_string("rows_dir", "", "instead of --runs: a folder of <run>.csv rows files "
                    "(as committed in reports/fusion/rows)")

TOPOLOGIES = ("independent", "front", "back", "double")
ENCODERS = ("learned", "stft")
COLUMNS = (("snr_improvement", "SNRi dB"), ("snr_improvement_s0", "SNRi L"),
           ("snr_improvement_s1", "SNRi R"), ("sisdr_improvement", "SI-SDRi dB"),
           ("stoi", "STOI (mean ears)"), ("better_ear_stoi", "better-ear STOI"),
           ("mbstoi", "MBSTOI"), ("mbstoi_improvement", "MBSTOI gain"),
           ("ic_target_error", "|dIC| target"), ("ic_noise_error", "|dIC| noise"),
           ("delta_ild_db", "dILD dB"), ("delta_itd_ms", "dITD ms"))
PAIRED = ("snr_improvement", "sisdr_improvement", "stoi", "better_ear_stoi", "mbstoi",
          "delta_ild_db", "ic_noise_error")


def _rows(runs: str, rows_dir: str = "") -> dict:
  found = {}
  if rows_dir:
    paths = {os.path.basename(p)[:-4]: p for p in glob.glob(os.path.join(rows_dir, "*.csv"))}
  else:
    paths = {p.split(os.sep)[-4]: p
             for p in glob.glob(os.path.join(runs, "*", "eval", "*", "rows.csv"))}
  for name in sorted(paths):
    found[name] = {int(r["example_id"]): r for r in evaluation.read_rows(paths[name])}
  return found


def _fmt(mean, lo, hi, digits=2):
  if not np.isfinite(mean):
    return "-"
  if not np.isfinite(lo):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _digits(column):
  return 3 if "stoi" in column or column.startswith("ic_") else 2


def run_table(rows: dict) -> str:
  names = [n for n in rows]
  present = [(c, label) for c, label in COLUMNS if any(c in next(iter(r.values()), {})
                                                       for r in rows.values())]
  lines = ["| run | n | " + " | ".join(label for _, label in present) + " |",
           "| --- | --- |" + " --- |" * len(present)]
  for name in names:
    values = list(rows[name].values())
    cells = [_fmt(*metrics.mean_ci95([float(v.get(c, "nan")) for v in values]), _digits(c))
             for c, _ in present]
    lines.append(f"| {name} | {len(values)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _run(rows, topology, encoder):
  for name in rows:
    parts = name.split("_")
    if len(parts) >= 3 and parts[1] == topology and parts[2] == encoder:
      return name
  return None


def paired(rows: dict, a: str, b: str) -> dict:
  common_ids = sorted(set(rows[a]) & set(rows[b]))
  result = {"n": len(common_ids)}
  for column in PAIRED:
    try:
      diff = [float(rows[a][i][column]) - float(rows[b][i][column]) for i in common_ids]
    except KeyError:
      continue
    result[column] = metrics.mean_ci95(diff)
  return result


def paired_table(rows: dict) -> str:
  pairs = []
  for encoder in ENCODERS:
    base = _run(rows, "independent", encoder)
    for topology in TOPOLOGIES[1:]:
      other = _run(rows, topology, encoder)
      if base and other:
        pairs.append((other, base))
  for topology in TOPOLOGIES:
    learned, stft = _run(rows, topology, "learned"), _run(rows, topology, "stft")
    if learned and stft:
      pairs.append((learned, stft))
  lines = ["| A - B | n | " + " | ".join(PAIRED) + " |", "| --- | --- |" + " --- |" * len(PAIRED)]
  for a, b in pairs:
    result = paired(rows, a, b)
    cells = [_fmt(*result[c], _digits(c)) if c in result else "-" for c in PAIRED]
    lines.append(f"| {a} - {b} | {result['n']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def variance_table(path: str) -> str:
  with open(path) as f:
    data = json.load(f)
  stages = None
  lines = []
  for name, entry in sorted(data.items()):
    for label in ("initial", "trained"):
      values = entry[label]
      if stages is None:
        stages = sorted({key.split("/", 1)[1] for key in values},
                        key=lambda s: (not s.startswith("encoder"), s))
        lines = ["| run | weights | " + " | ".join(stages) + " |",
                 "| --- | --- |" + " --- |" * len(stages)]
      cells = []
      for stage in stages:
        left, right = values.get(f"left/{stage}"), values.get(f"right/{stage}")
        cells.append("-" if not left or not right else f"{abs(10 * np.log10(left / right)):.2f}")
      lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  rows = _rows(FLAGS.runs, FLAGS.rows_dir)
  print("### Per run (test split, means with 95% CIs)\n")
  print(run_table(rows))
  print("\n### Paired differences (same mixtures; mean and 95% CI of A - B)\n")
  print(paired_table(rows))
  if FLAGS.variances and os.path.exists(FLAGS.variances):
    print("\n### Left/right activation-variance ratio |10 log10(var_L / var_R)| dB per stage\n")
    print(variance_table(FLAGS.variances))


if __name__ == "__main__":
  app.run(main)
