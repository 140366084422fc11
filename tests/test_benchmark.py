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
  assert set(rows) == {"autodiff", "fused"}
  moved = {impl: row["bytes_accessed_mb"] for impl, row in rows.items()}
  # The fused norm reads the activations fewer times than autodiff's; both read and write at
  # least x, grad, dx and the output (4 activation-sized tensors).
  assert moved["fused"] < moved["autodiff"]
  assert moved["fused"] >= 4 * rows["fused"]["tensor_mb"]
  table = (tmp_path / "results.md").read_text()
  assert table.count("| norm_cost |") == 2


def test_uconv_kernels_rows_compare_pallas_with_xla(tmp_path):
  """The GPU kernel check runs anywhere (Pallas interpret mode off the GPU) on a tiny level."""
  subprocess.run([sys.executable, os.path.join(ROOT, "launch", "benchmark.py"),
                  "--what=uconv_kernels", "--uconv_shape=2,24,10", "--uconv_cases=2:8x4x4",
                  "--nouconv_conv_alone", f"--workdir={tmp_path}"],
                 cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
  row, = map(json.loads, open(tmp_path / "results.jsonl"))
  assert (row["stride"], row["tile_rows"], row["tile_channels"]) == (2, 8, 4)
  assert set(row["pallas_errors"]) == {"output", "dx", "d_kernel", "d_bias", "d_scale",
                                       "d_norm_bias"}
  assert max(row["pallas_errors"].values()) < 1e-2  # bfloat16 against the float32 XLA path
  assert row["level_fwd_bwd_ms"]["pallas"] > 0 and row["conv_bwd_ms"] is None
  assert "| uconv_kernels |" in (tmp_path / "results.md").read_text()
