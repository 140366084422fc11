"""NASS (issue 16) helpers: parameter counts, export without the training-only PCL head, and
the paired baseline-vs-NASS report.

  python launch/nass_tools.py counts
  python launch/nass_tools.py export --workdir=RUN --entry=nass_sudormrf_mono --variant=gpu \
      --out=pretrained/nass_sudormrf_mono [--set=data.num_examples.train=2000 ...]
  python launch/nass_tools.py report --runs=/tmp/nass --pairs=nass_sudormrf_mono:nass_sudormrf_mono_baseline,... \
      --out=reports/nass/results.md
  python launch/nass_tools.py report --runs=/tmp/nass_pcl --pairs=call2 --bench=/tmp/nass_pcl/bench

`export` writes the agreed pretrained format (launch/export_pretrained.py's) of the run's
config with `model.pcl_head=False`: the same function of the mixture, without the head's
parameters (they only score training representations) and without train inputs, so
`launch/separate.py --pretrained=<folder>` loads it like any shipped model.
`report` pairs two runs' test rows (A:B, folders in --runs) by example_id and gives the mean
A - B difference of SI-SNRi (= SI-SDRi, zero-mean) and SDRi with a 95% Student-t CI of the
paired difference, overall, by SNR bin and by talker separation; `--pairs=call2` names the
pairs of launch/nass_device_pcl.sh (NASS - baseline, nopcl - baseline, NASS - nopcl,
pclnorm - NASS, pclnorm - baseline, dual-path NASS - baseline). It also tabulates each run's
PCL term against its chance value log K and its validation SI-SDRi by step
(logs/metrics.jsonl), and with --bench the step times of launch/benchmark.py --what=step
(results.jsonl) with each PCL variant's overhead over its backbone's `nopcl` row. A pair
whose run has no test rows is reported as such; the others are still tabulated.
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


PAIR_PRESETS = {
    "call2": ("nass_sudormrf_mono:nass_sudormrf_mono_baseline",
              "nass_sudormrf_mono_nopcl:nass_sudormrf_mono_baseline",
              "nass_sudormrf_mono:nass_sudormrf_mono_nopcl",
              "nass_sudormrf_mono_pclnorm:nass_sudormrf_mono",
              "nass_sudormrf_mono_pclnorm:nass_sudormrf_mono_baseline",
              "nass_dualpath:nass_dualpath_baseline"),
}


def _pairs(spec: str) -> list[str]:
  pairs = []
  for item in spec.split(","):
    pairs += list(PAIR_PRESETS.get(item, (item,)))
  return pairs


def _metrics_log(run_dir: str) -> list[dict]:
  path = os.path.join(run_dir, "logs", "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def training_lines(runs: str, names) -> list[str]:
  """Per run: the PCL term (first / min / last logged value against log K) and validation
  SI-SDRi by step, from logs/metrics.jsonl."""
  lines = ["### Training logs (logs/metrics.jsonl)", "",
           "| run | last step | loss/pcl first | min | last | chance log K | val SI-SDRi by step |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name in names:
    records = _metrics_log(os.path.join(runs, name))
    if not records:
      lines.append(f"| {name} | (no metrics.jsonl) | | | | | |")
      continue
    pcl = [r["loss/pcl"] for r in records if "loss/pcl" in r]
    chance = ""
    config_path = os.path.join(runs, name, "config.json")
    if pcl and os.path.exists(config_path):
      with open(config_path) as f:
        saved = json.load(f)
      terms = (saved.get("config", saved).get("loss", {}) or {}).get("terms", {})
      settings = terms.get("pcl", {})
      k, m = settings.get("num_positions", 256), settings.get("num_negatives", 0)
      chance = f"{np.log(m + 1 if m and m < k else k):.3f}"
    val = [(r["step"], r["val_sisdri"]) for r in records if "val_sisdri" in r]
    last_step = max(r.get("step", 0) for r in records)
    pcl_cells = (f"{pcl[0]:.3f} | {min(pcl):.3f} | {pcl[-1]:.3f}" if pcl else "- | - | -")
    lines.append(f"| {name} | {last_step} | {pcl_cells} | {chance or '-'} | "
                 + ", ".join(f"{v:.2f}@{s}" for s, v in val) + " |")
  return lines + [""]


def bench_lines(bench_dir: str) -> list[str]:
  """Step times of launch/benchmark.py --what=step and each variant's overhead over the
  `<backbone>:nopcl` row of the same batch size."""
  path = os.path.join(bench_dir, "results.jsonl")
  if not os.path.exists(path):
    return [f"(no {path}: the step benchmark did not record a row)", ""]
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if r.get("benchmark") == "step"]
  base = {(r["config"].split(":")[0], r["batch_size"]): r["step_ms"] for r in rows
          if r["config"].endswith(":nopcl")}
  lines = ["### PCL step time (launch/benchmark.py --what=step, synthetic batch)", "",
           "| config | batch | dtype | step ms (back to back) | ms (each step waited for) | "
           "vs nopcl | compile + first step s | peak GiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    reference = base.get((r["config"].split(":")[0], r["batch_size"]))
    overhead = ("-" if reference is None or r["config"].endswith(":nopcl")
                else f"{100 * (r['step_ms'] / reference - 1):+.1f}%")
    lines.append(f"| {r['config']} | {r['batch_size']} | {r.get('dtype', '')} | "
                 f"{r['step_ms']:.1f} | {r.get('synced_step_ms', float('nan')):.1f} | {overhead} | "
                 f"{r.get('compile_and_first_step_s', float('nan')):.1f} | "
                 f"{r.get('peak_memory_gib', float('nan')):.2f} |")
  if rows:
    lines.append(f"device: {rows[0].get('device', '?')}, jax {rows[0].get('jax', '?')}")
  return lines + [""]


def report(runs: str, pairs, bench: str = "") -> list[str]:
  from spatialsep_jax import evaluation
  lines = []
  names = []
  for pair in pairs:
    for name in pair.split(":"):
      if name not in names:
        names.append(name)
  for pair in pairs:
    a_name, b_name = pair.split(":")
    try:
      a_rows, b_rows = _rows(os.path.join(runs, a_name)), _rows(os.path.join(runs, b_name))
    except FileNotFoundError as error:
      lines += [f"### {a_name} - {b_name}", "", f"not paired: {error}", ""]
      continue
    common_ids = len(set(a_rows) & set(b_rows))
    lines += [f"### {a_name} - {b_name}", "",
              f"test rows: {a_name} {len(a_rows)}, {b_name} {len(b_rows)}, paired {common_ids}", "",
              f"| subset | n | metric | {b_name} | {a_name} | A - B [95% CI] |",
              "| --- | --- | --- | --- | --- | --- |"]
    subsets = [("all", None)]
    subsets += [(label, (lambda lo, hi: lambda r: lo <= float(r["snr_db"]) < hi)(lo, hi))
                for label, lo, hi in SNR_BINS]
    subsets += [(label, (lambda lo, hi: lambda r: lo <= float(r["separation_deg"]) < hi)(lo, hi))
                for label, lo, hi in evaluation.SEPARATION_BINS]
    for label, subset in subsets:
      for metric, title in METRICS:
        if metric not in next(iter(a_rows.values())) or metric not in next(iter(b_rows.values())):
          continue
        s = paired(a_rows, b_rows, metric, subset)
        if s["n"] == 0:
          continue
        interval = (f"{s['diff']:+.2f} [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}]" if s["n"] > 1
                    else "- (one mixture)")
        lines.append(f"| {label} | {s['n']} | {title} | {s['baseline']:.2f} | {s['nass']:.2f} | "
                     f"{interval} |")
    lines.append("")
  lines += training_lines(runs, names)
  if bench:
    lines += bench_lines(bench)
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
  rp.add_argument("--pairs", required=True,
                  help="A:B,... (folders in --runs; A - B is reported), or a preset: "
                       + ", ".join(PAIR_PRESETS))
  rp.add_argument("--bench", default="", help="a launch/benchmark.py --workdir (results.jsonl)")
  rp.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if args.command == "counts":
    lines = counts()
  elif args.command == "export":
    export(args.workdir, args.entry, args.variant, args.out, args.set, args.checkpoint)
    return
  else:
    lines = report(args.runs, _pairs(args.pairs), args.bench)
  text = "\n".join(lines) + "\n"
  print(text)
  if getattr(args, "out", ""):
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  sys.exit(main())
