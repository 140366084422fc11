"""Nothing lost, nothing silently wrong (issue 15): torn rows written by the test, real SIGKILLs
of writer processes, a file-size limit standing in for a full disk, a workdir lock held by
another process, checkpoint identities in real orbax metadata, one-line launch errors."""

import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from spatialsep_jax import io_safety
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def _child(code: str, **kwargs):
  return subprocess.Popen([sys.executable, "-u", "-c", textwrap.dedent(code)], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _read_until(process, predicate):
  """Reads the child's stdout lines until predicate(line) holds; returns that line."""
  for line in process.stdout:
    if predicate(line.strip()):
      return line.strip()
  raise AssertionError(f"child ended early: {process.stderr.read()}")


# ------------------------------------------------------------------------------ torn files

def test_jsonl_torn_last_row_is_dropped_with_a_warning_naming_the_file(tmp_path, caplog):
  path = str(tmp_path / "metrics.jsonl")
  with io_safety.JsonlAppender(path) as log:
    for step in (1, 2, 3):
      log.append({"step": step, "loss": 0.5 * step})
  with open(path, "ab") as f:
    f.write(b'{"step": 4, "loss": 1.2')          # a kill in the middle of a row
  with caplog.at_level(logging.WARNING):
    log = io_safety.JsonlAppender(path)
  assert [r["step"] for r in log.rows] == [1, 2, 3]
  assert path in caplog.text and "torn last row" in caplog.text
  log.append({"step": 4, "loss": 2.0})
  log.close()
  assert [json.loads(line)["step"] for line in open(path)] == [1, 2, 3, 4]


def test_jsonl_damage_before_the_last_row_is_refused_not_repaired(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(io_safety.TornFileError, match="line 2"):
    io_safety.JsonlAppender(str(path))
  assert path.read_text().count("\n") == 3  # left as it was


def test_csv_row_cut_at_every_byte_of_the_last_row_is_detected(tmp_path, caplog):
  path = str(tmp_path / "rows.csv")
  columns = ["example_id", "sisdr", "sex_pair"]
  rows = [{"example_id": i, "sisdr": 12.345678 + i, "sex_pair": "female-male"} for i in range(3)]
  with io_safety.CsvAppender(path, columns) as out:
    for row in rows:
      out.append(row)
  data = open(path, "rb").read()
  last_start = data.rstrip(b"\n").rfind(b"\n") + 1
  for cut in range(last_start + 1, len(data)):    # inside the id, the number, the crc, ...
    with open(path, "wb") as f:
      f.write(data[:cut])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      recovered = io_safety.CsvAppender(path, columns)
    recovered.close()
    assert [r["example_id"] for r in recovered.rows] == ["0", "1"], cut
    assert "torn last row" in caplog.text and path in caplog.text
    assert open(path, "rb").read() == data[:last_start]
  # A row cut inside a number and padded to the right field count (a crash cannot do that,
  # but a hand edit can) still fails its checksum.
  with open(path, "wb") as f:
    f.write(data[:last_start] + b"2,14.3,female-male," + data.rsplit(b",", 1)[1])
  with caplog.at_level(logging.WARNING):
    recovered = io_safety.CsvAppender(path, columns)
  assert len(recovered.rows) == 2 and "checksum mismatch" in caplog.text
  recovered.append(rows[2])
  recovered.close()
  assert open(path, "rb").read() == data  # the rerun writes the same row again


def test_csv_of_other_columns_and_middle_damage_get_one_line_errors(tmp_path):
  path = str(tmp_path / "rows.csv")
  with io_safety.CsvAppender(path, ["a", "b"]) as out:
    out.append({"a": 1, "b": 2.0})
    out.append({"a": 2, "b": 3.0})
  with pytest.raises(ValueError, match="has the columns"):
    io_safety.CsvAppender(path, ["a", "c"])
  text = open(path).read().splitlines()
  text[1] = text[1].replace("2.0", "2.5")
  open(path, "w").write("\n".join(text) + "\n")
  with pytest.raises(io_safety.TornFileError, match="row 2 is damaged"):
    io_safety.CsvAppender(path, ["a", "b"])


# ------------------------------------------------------------------------------ kills

WRITER = """
import sys
from spatialsep_jax import io_safety
jsonl = io_safety.JsonlAppender(sys.argv[1] + "/log.jsonl")
rows = io_safety.CsvAppender(sys.argv[1] + "/rows.csv", ["i", "value"])
start = len(rows.rows)
for i in range(start, 100000):
  jsonl.append({"step": i, "value": i / 7})
  rows.append({"i": i, "value": i / 7})
  print(i, flush=True)
"""


def test_sigkill_while_appending_keeps_every_reported_row(tmp_path):
  folder = str(tmp_path)
  process = subprocess.Popen([sys.executable, "-u", "-c", WRITER, folder], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  reported = int(_read_until(process, lambda line: int(line) >= 40))
  process.send_signal(signal.SIGKILL)
  process.wait()
  log = io_safety.JsonlAppender(os.path.join(folder, "log.jsonl"))
  rows = io_safety.CsvAppender(os.path.join(folder, "rows.csv"), ["i", "value"])
  steps = [r["step"] for r in log.rows]
  assert steps == list(range(len(steps))) and len(steps) > reported
  ids = [int(r["i"]) for r in rows.rows]
  assert ids == list(range(len(ids))) and len(ids) > reported
  assert all(float(r["value"]) == int(r["i"]) / 7 for r in rows.rows)


RESUMING_TRAINER = """
import json, os, sys
from spatialsep_jax import io_safety, summary
workdir, total = sys.argv[1], int(sys.argv[2])
ckpt = os.path.join(workdir, "checkpoint.json")
start = json.load(open(ckpt))["step"] if os.path.exists(ckpt) else 0
writer = summary.MetricWriter(os.path.join(workdir, "logs"), resume_step=start)
for step in range(start + 1, total + 1):
  writer.write_scalars(step, {"loss": 1.0 / step})
  if step % 5 == 0:
    writer.write_scalars(step, {"val_loss": 2.0 / step})
    io_safety.atomic_write_json(ckpt, {"step": step})
  print(step, flush=True)
writer.close()
"""


def test_metrics_after_a_sigkill_and_resume_hold_every_step_exactly_once(tmp_path):
  from spatialsep_jax import summary
  workdir = str(tmp_path)
  command = [sys.executable, "-u", "-c", RESUMING_TRAINER, workdir, "30"]
  process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  _read_until(process, lambda line: int(line) >= 13)  # rows 11.. come after checkpoint 10
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_rows = summary.read_metrics(os.path.join(workdir, "logs"))
  assert max(r["step"] for r in killed_rows) >= 13
  subprocess.run(command, cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=300)
  rows = summary.read_metrics(os.path.join(workdir, "logs"))
  train_steps = [r["step"] for r in rows if "loss" in r]
  val_steps = [r["step"] for r in rows if "val_loss" in r]
  assert train_steps == list(range(1, 31))
  assert val_steps == list(range(5, 31, 5))
  # TensorBoard is told to drop the orphaned events after the restored step.
  from tensorboard.backend.event_processing import event_file_loader
  starts = []
  for name in os.listdir(os.path.join(workdir, "logs")):
    if name.startswith("events"):
      for event in event_file_loader.EventFileLoader(os.path.join(workdir, "logs", name)).Load():
        if event.HasField("session_log"):
          starts.append(event.step)
  assert 11 in starts or 16 in starts


# ------------------------------------------------------------------------------ full disk

FULL_DISK = """
import resource, sys
from spatialsep_jax import io_safety
folder, limit = sys.argv[1], int(sys.argv[2])
io_safety.atomic_write_json(folder + "/state.json", {"version": 1, "pad": "x" * 100})
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))   # Python ignores SIGXFSZ
rows = io_safety.CsvAppender(folder + "/rows.csv", ["i", "value"])
try:
  io_safety.atomic_write_json(folder + "/state.json", {"version": 2, "pad": "y" * (2 * limit)})
except io_safety.DiskFullError as e:
  print("atomic:", e, flush=True)
try:
  for i in range(100000):
    rows.append({"i": i, "value": i * 1.5})
except io_safety.DiskFullError as e:
  print("append:", e, flush=True)
  sys.exit(3)
"""


def test_a_full_disk_leaves_complete_rows_and_the_old_file_and_names_the_file(tmp_path):
  folder = str(tmp_path)
  result = subprocess.run([sys.executable, "-c", FULL_DISK, folder, "3000"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 3, result.stderr
  atomic, append = result.stdout.strip().splitlines()
  assert "state.json" in atomic and "disk full" in atomic
  assert "rows.csv" in append and "File too large" in append and "rerun" in append
  assert json.load(open(os.path.join(folder, "state.json")))["version"] == 1
  assert not [f for f in os.listdir(folder) if f.endswith(".tmp.json")]  # no temp left behind
  assert os.path.getsize(os.path.join(folder, "rows.csv")) <= 3000
  rows = io_safety.CsvAppender(os.path.join(folder, "rows.csv"), ["i", "value"]).rows
  assert [int(r["i"]) for r in rows] == list(range(len(rows))) and len(rows) > 50


# ------------------------------------------------------------------------------ lock

HOLDER = """
import sys, time
from spatialsep_jax import io_safety
lock = io_safety.WorkdirLock(sys.argv[1], "train").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _start_lock_holder(workdir):
  """A process that holds `workdir`'s train lock, returned once it holds it."""
  holder = subprocess.Popen([sys.executable, "-u", "-c", HOLDER, workdir], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _read_until(holder, lambda line: line == "locked")
  return holder


def test_workdir_lock_names_the_holder_and_a_killed_holder_is_stale(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  holder = _start_lock_holder(workdir)
  try:
    with pytest.raises(io_safety.WorkdirLocked) as error:
      io_safety.WorkdirLock(workdir, "train").acquire()
    message = str(error.value)
    assert f"pid {holder.pid} on {socket.gethostname()}" in message and "\n" not in message
    assert "--workdir" in message
    # Another purpose is another lock (evaluation may read a run that trains).
    with io_safety.WorkdirLock(workdir, "evaluate"):
      pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with caplog.at_level(logging.WARNING):
    with io_safety.WorkdirLock(workdir, "train") as lock:
      with io_safety.WorkdirLock(workdir, "train"):  # re-entrant in one process
        assert json.load(open(lock.path))["pid"] == os.getpid()
  assert f"stale lock of pid {holder.pid}" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    with io_safety.WorkdirLock(workdir, "train"):    # released cleanly: no warning
      pass
  assert "stale" not in caplog.text


def test_workdir_under_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(NotADirectoryError, match="is \\(or is under\\) a file"):
    io_safety.WorkdirLock(str(tmp_path / "file" / "run")).acquire()


# ------------------------------------------------------------------------------ identity

def test_checkpoint_identity_is_checked_from_real_orbax_metadata(tmp_path):
  import orbax.checkpoint as ocp
  from spatialsep_jax.configs import mono
  from spatialsep_jax import train
  config = mono.get_config("smoke")
  fingerprint = train.config_fingerprint(config)
  manager = ocp.CheckpointManager(str(tmp_path / "latest"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(60, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"w": np.ones(3, np.float32)}),
      meta=ocp.args.JsonSave(io_safety.identity_meta(config, fingerprint))))
  manager.wait_until_finished()
  meta = manager.restore(60, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  manager.close()
  io_safety.check_checkpoint_identity(meta, config, fingerprint, str(tmp_path), 60)
  other = mono.get_config("smoke")
  other.seed, other.optim.learning_rate = 7, 0.01
  with pytest.raises(ValueError) as error:
    io_safety.check_checkpoint_identity(meta, other, train.config_fingerprint(other),
                                        str(tmp_path), 60)
  message = str(error.value)
  assert "step 60" in message and "optim.learning_rate: 0.001 there, 0.01 now" in message
  assert "seed: 42 there, 7 now" in message and "\n" not in message
  with pytest.raises(ValueError, match="stores no config fingerprint"):
    io_safety.check_checkpoint_identity({}, config, fingerprint, str(tmp_path))


# ------------------------------------------------------------------------------ launch errors

def _launch(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=timeout)


def test_launch_verbs_turn_expected_errors_into_one_line(tmp_path):
  import soundfile
  (tmp_path / "file").write_text("x")
  soundfile.write(str(tmp_path / "x.wav"), np.full(800, 0.1, np.float32), 8000)
  nan = np.full(800, 0.1, np.float32)
  nan[5] = np.nan
  soundfile.write(str(tmp_path / "nan.wav"), nan, 8000, subtype="FLOAT")
  cases = [
      (["launch/evaluate.py", "--config=configs/nosuch.py"], "configs/nosuch.py does not exist"),
      (["launch/evaluate.py", "--config=configs/mono.py:nosuch"], "unknown config token"),
      (["launch/separate.py", "--config=configs/mono.py:smoke",
        f"--workdir={tmp_path}/file/run", f"{tmp_path}/nosuch.wav"], "nosuch.wav"),
      # The output folder is checked before the model is even looked up.
      (["launch/separate.py", "--pretrained=nosuch", f"--out={tmp_path}/file/out",
        f"{tmp_path}/x.wav"], "is a file; give another --out"),
      (["launch/separate.py", "--pretrained=nosuch", f"{tmp_path}/nan.wav"],
       "nan.wav holds 1 NaN/inf samples"),
      (["launch/separate.py", "--pretrained=nosuch", f"{tmp_path}/x.wav"],
       "no pretrained model 'nosuch'"),
      (["launch/evaluate.py", "--config=configs/mono.py:smoke", f"--workdir={tmp_path}/file/w",
        "--split=nosuch"], "--split=nosuch"),
      (["launch/evaluate.py", "--config=configs/mono.py:smoke", f"--workdir={tmp_path}/file/w"],
       "is (or is under) a file"),
      (["launch/dnsmos.py", f"{tmp_path}/x.wav", f"{tmp_path}/nosuch.wav"],
       "nosuch.wav does not exist"),
  ]
  for args, expected in cases:
    result = _launch(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, (args, result.stderr)
    assert expected in lines[0] and lines[0].startswith("error: "), (args, lines[0])


def test_recover_and_read_csv_for_a_writer_that_learns_its_columns_late(tmp_path, caplog):
  path = str(tmp_path / "rows.csv")
  assert io_safety.recover_csv(path) == [] and io_safety.read_csv(path) == []
  with io_safety.CsvAppender(path, ["example_id", "sisdr"]) as out:
    for i in range(3):
      out.append({"example_id": i, "sisdr": 1.5 * i})
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-4])                          # cut inside the last checksum
  assert [r["example_id"] for r in io_safety.read_csv(path)] == ["0", "1"]  # read-only
  assert open(path, "rb").read() == data[:-4]
  with caplog.at_level(logging.WARNING):
    rows = io_safety.recover_csv(path)                       # repairs
  assert [r["sisdr"] for r in rows] == ["0.0", "1.5"] and "torn last row" in caplog.text
  with io_safety.CsvAppender(path, ["example_id", "sisdr"]) as out:
    out.append({"example_id": 2, "sisdr": 3.0})
  assert open(path, "rb").read() == data


# ------------------------------------------------------------------------------ trainer / evaluator

def _smoke(smoke_dataset, **overrides):
  from spatialsep_jax.configs import mono
  from tests.conftest import smoke_config
  shards, cache = smoke_dataset
  return smoke_config(mono, shards, cache, **overrides)


def test_a_second_trainer_on_one_workdir_is_refused_naming_the_first(smoke_dataset, tmp_path):
  from spatialsep_jax import train
  workdir = str(tmp_path / "run")
  holder = _start_lock_holder(workdir)
  try:
    with pytest.raises(io_safety.WorkdirLocked, match=f"pid {holder.pid} on"):
      train.train_and_evaluate(_smoke(smoke_dataset, train__num_steps=1), workdir,
                               progress=False)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "latest", "1"))


def test_resume_without_config_json_under_another_config_is_refused(smoke_dataset, tmp_path):
  from spatialsep_jax import train
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_smoke(smoke_dataset, train__num_steps=1), workdir, progress=False)
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(ValueError, match="(different|another) configuration"):
    train.train_and_evaluate(_smoke(smoke_dataset, train__num_steps=2, seed=7), workdir,
                             progress=False)


def test_sigkill_of_a_training_run_then_resume_logs_every_step_exactly_once(smoke_dataset,
                                                                            tmp_path):
  import time
  from spatialsep_jax import summary
  shards, cache = smoke_dataset
  workdir = str(tmp_path / "run")
  command = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
             "--config=" + os.path.join(ROOT, "configs", "mono.py") + ":smoke",
             f"--workdir={workdir}", f"--config.data.shards_dir={shards}",
             f"--config.data.cache_dir={cache}", "--config.train.num_steps=12",
             "--config.train.log_every=1", "--config.train.checkpoint_every=3",
             "--config.train.eval_every=3", "--config.eval.after_training=False"]
  process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
  logs = os.path.join(workdir, "logs")
  while process.poll() is None:
    rows = summary.read_metrics(logs)
    if any(r["step"] >= 5 for r in rows):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  subprocess.run(command, cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)
  steps = [r["step"] for r in summary.read_metrics(logs) if "loss" in r]
  assert steps == list(range(1, 13))
  val_steps = [r["step"] for r in summary.read_metrics(logs) if "val_loss" in r]
  assert val_steps == list(range(3, 13, 3))


def test_evaluation_resumes_after_a_row_torn_inside_a_number(smoke_dataset, tmp_path):
  from spatialsep_jax import evaluation, train
  shards, _ = smoke_dataset
  config = _smoke(smoke_dataset, train__num_steps=1, eval__vocoder=False)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, progress=False)
  first = evaluation.run_evaluation(config, workdir, shards_dir=shards, progress=False)
  rows_path = os.path.join(first["out_dir"], "rows.csv")
  complete = open(rows_path, "rb").read()
  expected = evaluation.read_rows(rows_path)
  last = complete.rstrip(b"\n").rfind(b"\n") + 1
  cut = last + complete[last:].find(b".") + 2                  # two characters into a number
  open(rows_path, "wb").write(complete[:cut])
  evaluation.run_evaluation(config, workdir, shards_dir=shards, progress=False)
  assert evaluation.read_rows(rows_path) == expected


def test_training_on_a_full_disk_ends_in_one_line_and_the_rerun_finishes(smoke_dataset, tmp_path):
  """train.py under a 30 kB file-size limit: the first checkpoint cannot be written."""
  shards, cache = smoke_dataset
  workdir = str(tmp_path / "run")
  flags = ["--config=configs/mono.py:smoke", f"--workdir={workdir}",
           f"--config.data.shards_dir={shards}", f"--config.data.cache_dir={cache}",
           "--config.eval.after_training=False"]
  script = textwrap.dedent(f"""
    import resource, runpy, sys
    sys.path.insert(0, "launch")
    resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))
    sys.argv = ["launch/train.py"] + {flags!r}
    runpy.run_path("launch/train.py", run_name="__main__")
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
  # Progress lines and Python warnings (e.g. jax's compilation cache could not be written
  # either) aside, the output is one line.
  lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()
           if line.strip() and not line.strip().startswith(("mono:", "step ", "warnings.warn"))
           and "Warning: " not in line]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: disk full writing "), lines[:20]
  assert "File too large" in lines[0] and "Traceback" not in result.stderr
  rerun = subprocess.run([sys.executable, "launch/train.py", *flags], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0 and "Done: step 6" in rerun.stdout, rerun.stderr[-3000:]


def test_atomic_write_keeps_ordinary_permissions_and_the_old_file_on_error(tmp_path):
  path = str(tmp_path / "summary.json")
  io_safety.atomic_write_json(path, {"a": 1})
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
  with pytest.raises(ZeroDivisionError):
    with io_safety.atomic_path(path) as temporary:
      open(temporary, "w").write("half")
      1 / 0
  assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["summary.json"]
