"""Pairs two evaluations of the same test split example by example (issue 14's bf16 accuracy
check: the XLA U-ConvBlock against `model.uconv_impl=pallas`, same seed, data and batches).

  python launch/kernel_accuracy.py --a=benchmarks/h200/kacc_xla --b=benchmarks/h200/kacc_pallas

Each folder holds the `rows.csv` an evaluation writes (and `metrics.jsonl` of training, for
the validation curve). Prints a markdown table: mean of each run, and b - a with the 95%
Student-t interval of the paired difference, per metric.
"""

import json
import os

from absl import app, flags

from spatialsep_jax import evaluation, metrics
from spatialsep_jax.configs.proj.study import report

_A = flags.DEFINE_string("a", None, "folder of the reference run (rows.csv)", required=True)
_B = flags.DEFINE_string("b", None, "folder of the compared run (rows.csv)", required=True)
_METRICS = flags.DEFINE_list("metrics", ["sisdr_improvement", "sdr_improvement", "sisdr"],
                             "columns of rows.csv to pair")


def read_rows(folder: str) -> dict[int, dict]:
  rows = evaluation.read_rows(os.path.join(folder, "rows.csv"))
  if not rows:
    raise SystemExit(f"error: no rows.csv in {folder}; point --a/--b at an evaluation's folder")
  return {int(row["example_id"]): row for row in rows}


def validation_curve(folder: str) -> dict[int, float]:
  path = os.path.join(folder, "metrics.jsonl")
  curve = {}
  if os.path.exists(path):
    for line in open(path):
      record = json.loads(line)
      if "val_sisdri" in record:
        curve[int(record["step"])] = float(record["val_sisdri"])
  return curve


def paired_table(rows_a: dict, rows_b: dict, names: list[str]) -> str:
  """b - a per metric over the mixtures both scored (the study report's paired differences),
  with the separation / sex-pair breakdown of the first metric."""
  common = sorted(set(rows_a) & set(rows_b))
  if not common:
    raise SystemExit("error: the two evaluations share no example_id; score the same split")
  lines = [f"{len(common)} test mixtures in both", "",
           "| metric (dB) | subset | n | a | b | b - a [95% CI] |",
           "| --- | --- | --- | --- | --- | --- |"]
  for k, name in enumerate(names):
    for subset, diff in report.paired_differences(rows_b, rows_a, name).items():
      if k and subset != "all":
        continue
      means = ["-", "-"]
      if subset == "all":
        means = [f"{metrics.mean_ci95([float(rows[i][name]) for i in common])[0]:.3f}"
                 for rows in (rows_a, rows_b)]
      lo, hi = diff["ci95"]
      lines.append(f"| {name} | {subset} | {diff['n']} | {means[0]} | {means[1]} | "
                   f"{diff['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
  return "\n".join(lines)


def main(argv):
  del argv
  print(paired_table(read_rows(_A.value), read_rows(_B.value), _METRICS.value))
  curve_a, curve_b = validation_curve(_A.value), validation_curve(_B.value)
  if curve_a or curve_b:
    print("\n| step | val SI-SDRi a | val SI-SDRi b |\n| --- | --- | --- |")
    for step in sorted(set(curve_a) | set(curve_b)):
      print(f"| {step} | {curve_a.get(step, float('nan')):.3f} | "
            f"{curve_b.get(step, float('nan')):.3f} |")


if __name__ == "__main__":
  app.run(main)
