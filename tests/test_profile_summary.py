"""launch/profile_summary.py against a hand-built XSpace with known kernel times."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")


def _space(path: str) -> None:
  space = xplane_pb2.XSpace()
  plane = space.planes.add(name="/device:GPU:0")
  plane.event_metadata[1].name = "fusion_gln"
  plane.event_metadata[2].name = "gemm"
  ops = plane.lines.add(name="XLA Ops")
  for metadata_id, duration_ps in ((1, 3_000_000), (2, 1_000_000), (1, 2_000_000)):
    ops.events.add(metadata_id=metadata_id, duration_ps=duration_ps)
  stream = plane.lines.add(name="Stream #1")  # ignored when XLA Ops exists
  stream.events.add(metadata_id=2, duration_ps=9_000_000)
  space.planes.add(name="/host:CPU").lines.add(name="python").events.add(metadata_id=1,
                                                                           duration_ps=5)
  with open(path, "wb") as f:
    f.write(space.SerializeToString())


def test_kernel_times_groups_xla_ops(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import profile_summary
  path = str(tmp_path / "host.xplane.pb")
  _space(path)
  (totals, calls), = profile_summary.kernel_times(path).values()
  assert totals == {"fusion_gln": 5_000_000, "gemm": 1_000_000}
  assert calls == {"fusion_gln": 2, "gemm": 1}
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "profile_summary.py"),
                        str(tmp_path)], capture_output=True, text=True, check=True).stdout
  assert "0.01 ms of kernels in 3 launches" in out and "83.3%" in out


def test_kind_of_classifies_xla_kernel_names():
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import profile_summary
  expected = {"input_add_reduce_select_fusion": "reduction", "loop_add_fusion_2": "elementwise",
              "gemm_fusion_dot_42": "matmul", "memcpy128": "copy / scan stacking",
              "loop_dynamic_update_slice_fusion_8": "copy / scan stacking",
              "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm>": "matmul",
              "depthwise_bwd": "pallas", "norm_bwd_sums": "pallas"}
  assert {name: profile_summary.kind_of(name) for name in expected} == expected


_HLO = """HloModule jit_step

%fused_reduce (param_0: bf16[4,8]) -> (f32[4], bf16[4,8]) {
  %param_0 = bf16[4,8]{1,0} parameter(0)
}

ENTRY %main (x: bf16[4,8], w: f32[8]) -> f32[4,8] {
  %x = bf16[4,8]{1,0} parameter(0)
  %w = f32[8]{0} parameter(1)
  %input_reduce_fusion.3 = (f32[4]{0}, bf16[4,8]{1,0}) fusion(%x), kind=kInput, calls=%fused_reduce
  ROOT %loop_add_fusion = f32[4,8]{1,0} fusion(%input_reduce_fusion.3#0, /*index=1*/%input_reduce_fusion.3#1, %w), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/add"}
}
"""


def test_hlo_operand_bytes_counts_results_operands_and_tuple_elements(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import profile_summary
  (tmp_path / "module_0001.jit_step.sm_9.0a_gpu_after_optimizations.txt").write_text(_HLO)
  sizes, layers = profile_summary.hlo_operand_bytes(str(tmp_path))
  assert layers == {"loop_add_fusion": "fwd add"}
  # results (4 * 4 + 32 * 2) + operand x (32 * 2); the trace spells '.' as '_'
  assert sizes["input_reduce_fusion_3"] == 16 + 64 + 64
  # result 32 * 4 + tuple elements #0 (16) and #1 (64) + w (32)
  assert sizes["loop_add_fusion"] == 128 + 16 + 64 + 32


def test_hlo_operand_bytes_reads_a_real_compiled_module(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import jax
  import jax.numpy as jnp
  import profile_summary
  step = jax.jit(lambda x: jnp.sum(jnp.sin(x.astype(jnp.float32)) * 2, axis=1))
  text = step.lower(jax.ShapeDtypeStruct((64, 128), jnp.bfloat16)).compile().as_text()
  path = tmp_path / "after_optimizations.txt"
  path.write_text(text)
  sizes, _ = profile_summary.hlo_operand_bytes(str(path))
  # Whatever this backend fuses, the kernels together read the input and write the output.
  assert sizes and sum(sizes.values()) >= 64 * 128 * 2 + 64 * 4


def test_layer_of_names_direction_and_layer():
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import profile_summary
  assert profile_summary.layer_of("jit(train_step)/transpose(jvp(SuDORMRF))/SuDORMRF.blocks/"
                                  "block_15/depthwise_0/reduce_sum") == "bwd depthwise"
  assert profile_summary.layer_of("jit(train_step)/jvp(SuDORMRF)/SuDORMRF.blocks/block_0/"
                                  "fused_norm/mul") == "fwd fused_norm"
