"""The ablation study: every input configuration trained with the same budget, data and seed,
then evaluated and compared in one report.

  python launch/study.py --variant=gpu --workdir=runs/study \
      --configs=mono,unilateral,bilateral,ipd,ild,ild_ipd,ipd_af [--parallel=2] \
      [--set=train.num_steps=2000 --set=data.num_examples.train=8000]

Stages (each resumable; rerunning skips what is done):
  1. render the shared shards once (all configurations read the same render);
  2. train + evaluate each configuration in its own process (`--parallel` at a time),
     in <workdir>/<config>;
  3. write the report (markdown + PNG) to <workdir>/report (or --report_dir).
"""

import glob
import os
import subprocess
import sys
import time

from spatialsep_jax.launch import common
from absl import app, flags

flags.DEFINE_string("workdir", "runs/study", "study folder: one sub-folder per configuration")
flags.DEFINE_list("configs", ["mono", "unilateral", "bilateral", "ipd", "ild", "ild_ipd",
                              "ipd_af"], "configurations to compare: configs/<file>.py names, each "
                  "optionally with extra tokens joined by '+', e.g. ipd:uni or ipd:sepnorm; "
                  "each run's folder is its config.name (ipd_uni, ipd_sepnorm)")
flags.DEFINE_string("variant", "", "config variant for every run: '', 'smoke' or 'gpu'")
flags.DEFINE_multi_string("set", [], "a field override for every run, e.g. train.num_steps=2000")
flags.DEFINE_integer("parallel", 1, "configurations trained at the same time")
flags.DEFINE_string("report_dir", None, "where the report goes (default <workdir>/report)")
flags.DEFINE_bool("report_only", False, "only (re)build the report from finished runs")
FLAGS = flags.FLAGS


def _load(entry: str):
  return common.call_or_fail(common.load_named_config, entry, FLAGS.variant, FLAGS.set)


def _train_command(entry: str, workdir: str) -> list[str]:
  name, arg = common.split_entry(entry, FLAGS.variant)
  return ([sys.executable, os.path.join(common.ROOT, "launch", "train.py"),
           f"--config={os.path.join(common.ROOT, 'configs', name + '.py')}"
           + (f":{arg}" if arg else ""), f"--workdir={workdir}"]
          + [f"--config.{item}" for item in FLAGS.set])


def main(argv):
  del argv
  common.setup_logging()
  from data_pipeline import dataset
  from spatialsep_jax.configs.proj.study import report
  root = FLAGS.workdir
  os.makedirs(root, exist_ok=True)
  configs = {entry: _load(entry) for entry in FLAGS.configs}
  folders = {entry: config.name for entry, config in configs.items()}
  if len(set(folders.values())) != len(folders):
    common.fail(f"--configs names the same run twice: {sorted(folders.values())}")
  if not FLAGS.report_only:
    fingerprints = {dataset.dataset_fingerprint(c) for c in configs.values()}
    if len(fingerprints) != 1:
      common.fail("the configurations render different data; give them the same data.* fields")
    dataset.ensure_dataset(next(iter(configs.values())))
    pending = list(configs)
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    failures = []
    while pending or running:
      while pending and len(running) < FLAGS.parallel:
        entry = pending.pop(0)
        name = folders[entry]
        workdir = os.path.join(root, name)
        if glob.glob(os.path.join(workdir, "eval", "*", "summary.json")) and os.path.exists(
            os.path.join(workdir, "train_summary.json")):
          print(f"[study] {name}: already trained and evaluated, skipped")
          continue
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "study_entry.txt"), "w") as f:
          f.write(entry)  # the --configs entry that makes this run (ipd_uni <- ipd:uni)
        log = open(os.path.join(workdir, "train.log"), "a")
        print(f"[study] {name}: training -> {workdir} (log: {workdir}/train.log)")
        running[name] = (subprocess.Popen(_train_command(entry, workdir), stdout=log,
                                          stderr=subprocess.STDOUT, cwd=common.ROOT), log)
      time.sleep(2)
      for name, (process, log) in list(running.items()):
        if process.poll() is not None:
          log.close()
          del running[name]
          status = "done" if process.returncode == 0 else f"FAILED ({process.returncode})"
          print(f"[study] {name}: {status}")
          if process.returncode:
            failures.append(name)
    if failures:
      print(f"[study] failed: {failures}; see their train.log")
  out = FLAGS.report_dir or os.path.join(root, "report")
  path = report.build_report(root, out, list(folders.values()), variant=FLAGS.variant)
  print(f"[study] report: {path}")


if __name__ == "__main__":
  common.run(main)
