"""launch/benchmark.py's compile-only cost benchmarks, run as a user runs them."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_norm_cost_ranks_the_norm_implementations_by_bytes_moved(tmp_path):
  subprocess.run([sys.executable, os.path.join(ROOT, "launch", "benchmark.py"),
                  "--what=norm_cost", f"--workdir={tmp_path}"],
                 cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
  rows = {r["norm_impl"]: r for r in map(json.loads, open(tmp_path / "results.jsonl"))}
  assert set(rows) == {"autodiff", "fused", "fused_partials"}
  moved = {impl: row["bytes_accessed_mb"] for impl, row in rows.items()}
  # Each implementation reads the activations fewer times than the one before it; every one
  # reads and writes at least x, grad, dx and the output (4 activation-sized tensors).
  assert moved["fused_partials"] < moved["fused"] < moved["autodiff"]
  assert moved["fused_partials"] >= 4 * rows["fused_partials"]["tensor_mb"]
  table = (tmp_path / "results.md").read_text()
  assert table.count("| norm_cost |") == 3
