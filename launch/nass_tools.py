"""NASS (issue 16) helpers: parameter counts, export without the training-only PCL head, and
the paired baseline-vs-NASS report.

  python launch/nass_tools.py counts
  python launch/nass_tools.py export --workdir=RUN --entry=nass_sudormrf_mono --variant=gpu \
      --out=pretrained/nass_sudormrf_mono [--set=data.num_examples.train=2000 ...]
  python launch/nass_tools.py report --runs=/tmp/nass --pairs=nass_sudormrf_mono:nass_sudormrf_mono_baseline,... \
      --out=reports/nass/results.md

`export` writes the agreed pretrained format (launch/export_pretrained.py's) of the run's
config with `model.pcl_head=False`: the same function of the mixture, without the head's
parameters (they only score training representations) and without train inputs, so
`launch/separate.py --pretrained=<folder>` loads it like any shipped model.
`report` pairs two runs' test rows by example_id and gives the mean NASS - baseline difference
of SI-SNRi (= SI-SDRi, zero-mean) and SDRi with a 95% Student-t CI, overall, by SNR bin and by
talker separation.
"""

import argparse
import json
import os
import sys

import numpy as np

SNR_BINS = (("SNR < -3 dB", -99.0, -3.0), ("SNR -3..0 dB", -3.0, 0.0), ("SNR >= 0 dB", 0.0, 99.0))
METRICS = (("sisdr_improvement", "SI-SNRi"), ("sdr_improvement", "SDRi"))


def _config(entry: str, overrides=(), variant: str = ""):
  """configs/<name>.py of an entry 'name:tok1+tok2' (study.py's form) at `variant`."""
  from spatialsep_jax.launch import common
  return common.load_named_config(entry, variant, overrides)


def counts() -> list[str]:
  """Parameters of each backbone's baseline, its noise output and its PCL head (abstract
  shapes; nothing is computed)."""
  from spatialsep_jax import contrastive, models
  from spatialsep_jax.models import dual_path
  lines = ["| backbone (config) | baseline | + noise output (inference) | + PCL head (training only) |",
           "| --- | --- | --- | --- |"]
  for name in ("nass_sudormrf_mono", "nass_sudormrf_bilateral", "nass_dualpath"):
    for size in ("gpu", ""):
      base = models.count_params(models.abstract_params(
          models.build(_config(f"{name}:baseline", (), size)), 800))
      nass = models.abstract_params(models.build(_config(name, (), size)), 800)
      inference = models.count_params(contrastive.inference_params(nass))
      head = models.count_params(nass[contrastive.HEAD_NAME])
      lines.append(f"| {name}:{size or 'default'} | {base:,} | {inference - base:,} | {head:,} |")
  seed = dict(enc_basis=256, model_dim=256, num_blocks=2, layers_per_path=8, num_heads=8,
              ff_dim=1024, chunk_size=250)
  with_noise, without = (models.count_params(models.abstract_params(
      dual_path.DualPathTransformer(extra_outputs=extra, **seed), 800)) for extra in (1, 0))
  lines.append(f"| dual_path_transformer at the seed's SepFormer size (N = D = 256, 2 x (8 + 8) "
               f"layers) | {without:,} | {with_noise - without:,} | 66,324 |")
  return lines


def export(workdir: str, entry: str, variant: str, out: str, overrides,
           which: str = "best") -> None:
  import flax
  import jax
  from spatialsep_jax import contrastive, evaluation, train
  from spatialsep_jax.launch import export_pretrained
  config = _config(entry, overrides, variant)
  _, variables, step = evaluation.load_trained(config, workdir, which)
  params = contrastive.inference_params(jax.device_get(variables["params"]))
  params = export_pretrained.float16_tree(params)
  inference_config = config.copy_and_resolve_references()
  if "pcl_head" in inference_config.model:
    inference_config.model.pcl_head = False
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "params.msgpack"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(params))
  from spatialsep_jax.launch import common
  name, arg = common.split_entry(entry, variant)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"name": config.name, "config_file": f"configs/{name}.py",
               "config_arg": arg, "config": inference_config.to_dict(),
               "fingerprint": train.config_fingerprint(inference_config),
               "trained_fingerprint": train.config_fingerprint(config),
               "note": "model.pcl_head=False: the training-only PCL head is not exported"},
              f, indent=1, default=list)
  summaries = sorted(p for p in (os.path.join(workdir, "eval", d, "summary.json")
                                 for d in os.listdir(os.path.join(workdir, "eval")))
                     if os.path.exists(p)) if os.path.isdir(os.path.join(workdir, "eval")) else []
  metrics = {"step": int(step), "checkpoint": which}
  if summaries:
    with open(summaries[-1]) as f:
      summary = json.load(f)
    metrics.update(split=summary.get("split"), num_examples=summary.get("num_examples"),
                   overall=summary.get("overall"))
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1)
  print(f"exported {workdir} ({which}, step {int(step)}) to {out} without params['pcl_head']")


def _rows(run_dir: str) -> dict:
  import glob
  from spatialsep_jax import evaluation
  paths = sorted(glob.glob(os.path.join(run_dir, "eval", "*", "rows.csv")))
  if not paths:
    raise FileNotFoundError(f"{run_dir} has no eval/*/rows.csv; evaluate the run first")
  return {int(r["example_id"]): r for r in evaluation.read_rows(paths[-1])}


def paired(nass_rows: dict, base_rows: dict, metric: str, subset=None) -> dict:
  """Mean NASS, mean baseline and the mean paired difference with its 95% CI."""
  from spatialsep_jax import metrics as metrics_lib
  ids = sorted(set(nass_rows) & set(base_rows))
  if subset is not None:
    ids = [i for i in ids if subset(nass_rows[i])]
  a = np.array([nass_rows[i][metric] for i in ids], float)
  b = np.array([base_rows[i][metric] for i in ids], float)
  mean, lo, hi = metrics_lib.mean_ci95(a - b) if len(ids) > 1 else (float("nan"),) * 3
  return {"n": len(ids), "nass": float(np.mean(a)) if len(a) else float("nan"),
          "baseline": float(np.mean(b)) if len(b) else float("nan"),
          "diff": mean, "ci": (lo, hi)}


def report(runs: str, pairs) -> list[str]:
  from spatialsep_jax import evaluation
  lines = []
  for pair in pairs:
    nass_name, base_name = pair.split(":")
    nass_rows, base_rows = _rows(os.path.join(runs, nass_name)), _rows(os.path.join(runs, base_name))
    lines += [f"### {nass_name} vs {base_name}", "",
              "| subset | n | metric | baseline | NASS | NASS - baseline [95% CI] |",
              "| --- | --- | --- | --- | --- | --- |"]
    subsets = [("all", None)]
    subsets += [(label, (lambda lo, hi: lambda r: lo <= float(r["snr_db"]) < hi)(lo, hi))
                for label, lo, hi in SNR_BINS]
    subsets += [(label, (lambda lo, hi: lambda r: lo <= float(r["separation_deg"]) < hi)(lo, hi))
                for label, lo, hi in evaluation.SEPARATION_BINS]
    for label, subset in subsets:
      for metric, title in METRICS:
        if metric not in next(iter(nass_rows.values())):
          continue
        s = paired(nass_rows, base_rows, metric, subset)
        if s["n"] == 0:
          continue
        lines.append(f"| {label} | {s['n']} | {title} | {s['baseline']:.2f} | {s['nass']:.2f} | "
                     f"{s['diff']:+.2f} [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}] |")
    lines.append("")
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("counts")
  ex = sub.add_parser("export")
  ex.add_argument("--workdir", required=True)
  ex.add_argument("--entry", required=True, help="configs/<name>.py entry, '+'-joined tokens")
  ex.add_argument("--variant", default="gpu", help="size variant the run was trained with")
  ex.add_argument("--out", required=True)
  ex.add_argument("--set", action="append", default=[], help="a.b=value overrides of the run")
  ex.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  rp = sub.add_parser("report")
  rp.add_argument("--runs", required=True)
  rp.add_argument("--pairs", required=True, help="nass_run:baseline_run,... (folders in --runs)")
  rp.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if args.command == "counts":
    lines = counts()
  elif args.command == "export":
    export(args.workdir, args.entry, args.variant, args.out, args.set, args.checkpoint)
    return
  else:
    lines = report(args.runs, args.pairs.split(","))
  text = "\n".join(lines) + "\n"
  print(text)
  if getattr(args, "out", ""):
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  sys.exit(main())
