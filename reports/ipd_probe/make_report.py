"""Tables and curves of the IPD probe (issue 13 part 2) from the run folders under runs/.

  python reports/ipd_probe/make_report.py    # writes curves.png and tables.md beside itself

Reads each run's logs/metrics.jsonl (training loss every 10 steps, validation SI-SDRi every
125 steps) and eval/test-best-step*/rows.csv (one row per test mixture). Paired
differences are per-mixture A - B over the same 200 test mixtures, mean with a 95% Student-t
interval; they are intervals over mixtures for one training seed each.
"""

import csv
import glob
import json
import os

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = ["bilateral", "ipd", "ipd_cossin", "ipd_sepnorm_cossin", "ipd_zeroinit",
        "ipd_cossin_zeroinit", "mono"]
LABELS = {
    "bilateral": "bilateral (no IPD)",
    "ipd": "+IPD concat, raw angle (the study)",
    "ipd_cossin": "+IPD concat, cos/sin",
    "ipd_sepnorm_cossin": "+IPD concat, cos/sin, own norm",
    "ipd_zeroinit": "+IPD zero-init branch, angle",
    "ipd_cossin_zeroinit": "+IPD zero-init branch, cos/sin",
    "mono": "mono (one T-mic)",
}
PAIRS = [
    ("ipd", "bilateral", "concatenated raw IPD vs none (the study's finding 2 at this budget)"),
    ("ipd_cossin", "ipd", "representation: cos/sin vs wrapped angle, concatenated"),
    ("ipd_sepnorm_cossin", "ipd_cossin", "scale: the cos/sin map normalised on its own"),
    ("ipd_zeroinit", "ipd", "path: zero-initialised residual branch vs concatenation (angle)"),
    ("ipd_cossin_zeroinit", "ipd_zeroinit", "representation inside the branch"),
    ("ipd_cossin_zeroinit", "ipd_cossin", "path: branch vs concatenation (cos/sin)"),
    ("ipd_zeroinit", "bilateral", "branch (angle) vs no IPD"),
    ("ipd_cossin_zeroinit", "bilateral", "branch (cos/sin) vs no IPD"),
    ("bilateral", "mono", "second ear vs one T-mic"),
]
BINS = [("co-located <=15 deg", 0, 15), ("near 15-60 deg", 15, 60), ("far >=60 deg", 60, 181)]


def bin_of(separation_deg):
  """The evaluation's angular-separation bins: <= 15, 15-60, >= 60 degrees."""
  if separation_deg <= 15:
    return BINS[0][0]
  return BINS[1][0] if separation_deg < 60 else BINS[2][0]


def mean_ci(values):
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
  return mean, mean - half, mean + half, len(values)


def fmt(stat):
  mean, lo, hi, _ = stat
  return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def read_jsonl(path):
  train, val = {}, {}
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if "val_sisdri" in row:
        val[row["step"]] = row  # a resumed run may repeat a step: the last one counts
      elif "loss" in row:
        train[row["step"]] = row
  return dict(sorted(train.items())), dict(sorted(val.items()))


def read_rows(run):
  paths = sorted(glob.glob(os.path.join(HERE, "runs", run, "eval", "test-best-step*", "rows.csv")))
  with open(paths[-1]) as f:
    return {int(r["example_id"]): r for r in csv.DictReader(f)}


def main():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  logs = {run: read_jsonl(os.path.join(HERE, "runs", run, "logs", "metrics.jsonl")) for run in RUNS}
  rows = {run: read_rows(run) for run in RUNS}
  fig, (ax_val, ax_loss) = plt.subplots(1, 2, figsize=(13, 4.8))
  for run in RUNS:
    train, val = logs[run]
    ax_val.plot(list(val), [v["val_sisdri"] for v in val.values()], marker="o", ms=3,
                label=LABELS[run])
    steps = np.array(list(train))
    loss = np.array([t["loss"] for t in train.values()])
    kernel = np.ones(5) / 5  # 50-step moving average of the 10-step logs
    ax_loss.plot(steps[4:], np.convolve(loss, kernel, mode="valid"), label=LABELS[run])
  ax_val.set(xlabel="step (batch 16)", ylabel="validation SI-SDRi (dB)",
             title="Validation SI-SDRi, 256 val mixtures (unseen rooms)")
  ax_loss.set(xlabel="step (batch 16)", ylabel="training loss (neg. SI-SDR, dB)",
              title="Training loss, 50-step moving average", ylim=(0, 12))
  for ax in (ax_val, ax_loss):
    ax.grid(alpha=0.3)
  ax_val.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "curves.png"), dpi=110)

  lines = ["| run | val SI-SDRi at 250 / 500 / 750 / 1000 | best val (step) | training loss, "
           "last 100 steps | test SI-SDRi [95% CI] |", "| --- | --- | --- | --- | --- |"]
  for run in RUNS:
    train, val = logs[run]
    at = " / ".join(f"{val[s]['val_sisdri']:.2f}" if s in val else "n/a" for s in (250, 500, 750, 1000))
    best = max(val.values(), key=lambda v: v["val_sisdri"])
    tail = np.mean([t["loss"] for s, t in train.items() if s > 900])
    test = mean_ci([float(r["sisdr_improvement"]) for r in rows[run].values()])
    lines.append(f"| {LABELS[run]} | {at} | {best['val_sisdri']:.2f} ({best['step']}) | "
                 f"{tail:.2f} | {test[0]:.2f} [{test[1]:.2f}, {test[2]:.2f}] |")
  lines += ["", "| A - B | what it tests | all (n=200) | " + " | ".join(b[0] for b in BINS) + " |",
            "| --- | --- | --- |" + " --- |" * len(BINS)]
  for a, b, what in PAIRS:
    shared = sorted(set(rows[a]) & set(rows[b]))
    diff = {i: float(rows[a][i]["sisdr_improvement"]) - float(rows[b][i]["sisdr_improvement"])
            for i in shared}
    cells = [fmt(mean_ci(list(diff.values())))]
    for name, _, _ in BINS:
      ids = [i for i in shared if bin_of(float(rows[a][i]["separation_deg"])) == name]
      cells.append(fmt(mean_ci([diff[i] for i in ids])) + f" ({len(ids)})" if len(ids) > 2 else "n/a")
    lines.append(f"| {a} - {b} | {what} | " + " | ".join(cells) + " |")
  with open(os.path.join(HERE, "tables.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
