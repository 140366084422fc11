"""The multi-host path on CPU: two processes (jax.distributed on localhost, one CPU device
each) train the same losses as one process for the same seed and global batch."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, xla_flags


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "logs", "metrics.jsonl"))]
  return [(r["step"], r["loss"]) for r in rows if "loss" in r], \
      [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]


def test_two_processes_match_one(smoke_dataset, tmp_path):
  shards, cache = smoke_dataset
  command = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
             "--config=configs/mono.py:smoke", f"--config.data.shards_dir={shards}",
             f"--config.data.cache_dir={cache}", "--config.train.num_steps=3",
             "--config.train.batch_size=4", "--config.train.log_every=1",
             "--config.data.loader=grain"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = xla_flags()  # one CPU device per process
  single = subprocess.run(command + [f"--workdir={tmp_path / 'one'}",
                                     "--config.eval.after_training=False"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = _free_port()
  workers = [subprocess.Popen(command + [f"--workdir={tmp_path / 'two'}"], cwd=ROOT,
                              env={**env, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(index)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for index in range(2)]
  outputs = [worker.communicate(timeout=600)[0] for worker in workers]
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
  assert "Multi-process run: evaluate it in one process" in outputs[0]
  one_train, one_val = _losses(tmp_path / "one")
  two_train, two_val = _losses(tmp_path / "two")
  assert [s for s, _ in two_train] == [1, 2, 3] and [s for s, _ in two_val] == [3]
  for (_, a), (_, b) in zip(one_train + one_val, two_train + two_val):
    assert b == pytest.approx(a, rel=1e-5)
  assert os.path.isdir(tmp_path / "two" / "checkpoints" / "latest" / "3")


def test_sigterm_to_one_process_checkpoints_every_process_at_the_same_step(smoke_dataset,
                                                                           tmp_path):
  shards, cache = smoke_dataset
  workdir = tmp_path / "two"
  command = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
             "--config=configs/mono.py:smoke", f"--config.data.shards_dir={shards}",
             f"--config.data.cache_dir={cache}", "--config.train.num_steps=100000",
             "--config.train.batch_size=4", "--config.train.log_every=1",
             "--config.train.eval_every=100000", "--config.train.checkpoint_every=100000",
             "--config.data.loader=grain", f"--workdir={workdir}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = xla_flags()
  port = _free_port()
  workers = [subprocess.Popen(command, cwd=ROOT,
                              env={**env, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(index)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for index in range(2)]
  metrics = workdir / "logs" / "metrics.jsonl"
  deadline = time.time() + 400
  while time.time() < deadline and all(w.poll() is None for w in workers):
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      break
    time.sleep(0.5)
  assert all(w.poll() is None for w in workers), [w.communicate()[0][-2000:] for w in workers]
  workers[1].send_signal(signal.SIGTERM)   # one process only, as a preempted host would be
  outputs = [w.communicate(timeout=400)[0] for w in workers]
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
  saved = [re.search(r"checkpoint saved at step (\d+)", output) for output in outputs]
  assert all(saved), [o[-2000:] for o in outputs]
  steps = {int(m.group(1)) for m in saved}
  assert len(steps) == 1, steps
  step = steps.pop()
  assert os.path.isdir(workdir / "checkpoints" / "latest" / str(step))
