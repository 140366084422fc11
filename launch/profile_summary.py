"""Where the device time of a `jax.profiler` trace goes: kernels grouped by name.

  python launch/profile_summary.py <trace folder or .xplane.pb> [--top=25] \
      [--hlo=<XLA dump folder or *after_optimizations.txt>]

Reads the XSpace protobuf that `jax.profiler.trace` writes (parsed with the proto
classes TensorFlow ships, so this runs where TensorFlow is installed) and prints, per
GPU plane, total kernel time, the share of each kernel name, and the number of calls.
With --hlo (the optimised HLO text of the same program, from
XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text), each kernel also gets the bytes its
operands and results hold and the bandwidth that implies (an upper bound on the bytes a
kernel moves: a fusion that reads part of an operand is charged the whole of it).
"""

import collections
import glob
import math
import os
import re

from spatialsep_jax.launch import common
from absl import app, flags

flags.DEFINE_integer("top", 25, "kernels listed per device")
flags.DEFINE_string("hlo", None, "optimised HLO text of the traced program (file or dump folder)")
FLAGS = flags.FLAGS


def _xplane_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  found = sorted(glob.glob(os.path.join(path, "**", "*.xplane.pb"), recursive=True))
  if not found:
    common.fail(f"no *.xplane.pb under {path}; pass the folder given to jax.profiler.trace")
  return found


def kernel_times(xplane_path: str) -> dict[str, collections.Counter]:
  """Per GPU plane: (op name -> total picoseconds, op name -> calls)."""
  try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
  except ImportError:
    common.fail("reading traces needs TensorFlow's proto classes; pip install tensorflow-cpu")
  space = xplane_pb2.XSpace()
  with open(xplane_path, "rb") as f:
    space.ParseFromString(f.read())
  planes = {}
  for plane in space.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    totals, calls = collections.Counter(), collections.Counter()
    # "XLA Ops" names each HLO fusion/op; without it, fall back to the raw CUDA streams.
    lines = [line for line in plane.lines if line.name == "XLA Ops"] or [
        line for line in plane.lines if line.name.lower().startswith("stream")]
    for line in lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        totals[name] += event.duration_ps
        calls[name] += 1
    planes[plane.name] = (totals, calls)
  return planes


# The Pallas kernels of spatialsep_jax.models.pallas_uconv, by the names it gives them (a
# generic "custom-call" can be a cuBLAS matmul, so it is not taken for one).
PALLAS_KERNELS = ("depthwise_fwd", "depthwise_bwd", "norm_bwd_sums")
KINDS = (("pallas", PALLAS_KERNELS),
         ("matmul", ("gemm", "cutlass", "cublas", "dot")),
         ("copy / scan stacking", ("memcpy", "copy", "dynamic_update_slice", "memset")),
         ("reduction", ("reduce",)),
         ("elementwise", ("",)))


def kind_of(name: str) -> str:
  """Coarse class of an XLA GPU kernel, from the fusion names XLA gives them."""
  lowered = name.lower()
  return next(kind for kind, marks in KINDS if any(mark in lowered for mark in marks))


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


def _shape_bytes(text: str) -> int:
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _SHAPE.findall(text))


def _closing(text: str, start: int) -> int:
  """Index of the parenthesis closing the one at `text[start]`."""
  depth = 0
  for index in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[index], 0)
    if depth == 0:
      return index
  return len(text) - 1


def _top_level_items(text: str) -> list[str]:
  """Comma-separated items of `text` (outer parentheses dropped) outside any brackets."""
  if text.startswith("(") and _closing(text, 0) == len(text) - 1:
    text = text[1:-1]
  items, depth, start = [], 0, 0
  for index, char in enumerate(text):
    depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(char, 0)
    if char == "," and depth == 0:
      items.append(text[start:index])
      start = index + 1
  items.append(text[start:])
  return [item for item in items if item.strip()]


def layer_of(op_name: str) -> str:
  """'fwd'/'bwd' and the layer an HLO op_name belongs to, block indices dropped:
  '.../transpose(jvp(SuDORMRF))/SuDORMRF.blocks/block_15/depthwise_0/reduce_sum' ->
  'bwd depthwise'."""
  parts = op_name.split("/")
  # Scopes that name no layer: jit-wrapped helpers (jit(_pad)), Flax's Dense inside a
  # named Pointwise, and the plumbing of scan and remat.
  plumbing = ("dense", "checkpoint", "while", "body", "eval_jaxpr", "rematted_computation")
  scopes = [part for part in parts[:-1]
            if not part.startswith(("jit(", "transpose(", "jvp(")) and part not in plumbing]
  layer = re.sub(r"_\d+$", "", scopes[-1]) if scopes else parts[-1]
  return ("bwd " if "transpose(" in op_name else "fwd ") + layer


def hlo_operand_bytes(path: str) -> tuple[dict[str, int], dict[str, str]]:
  """(instruction name -> bytes of its result and operands, for every fusion, custom call
  and copy; instruction name -> `layer_of` its op_name) from an optimised HLO text dump
  (the largest one in a dump folder). Names are spelled as in traces ('.' -> '_')."""
  if os.path.isdir(path):
    found = glob.glob(os.path.join(path, "**", "*after_optimizations.txt"), recursive=True)
    if not found:
      common.fail(f"no *after_optimizations.txt under {path}; dump with XLA_FLAGS="
                  "--xla_dump_to=DIR --xla_dump_hlo_as_text")
    path = max(found, key=os.path.getsize)
  element_bytes, calls, layers = {}, {}, {}
  for line in open(path):
    match = _DEFINITION.match(line)
    if not match:
      continue
    name, rest = match.groups()
    type_end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.find(" ")
    # A tuple result's elements are addressed as "name#k" by the instructions using them.
    element_bytes[name] = [_shape_bytes(element) for element in _top_level_items(rest[:type_end])]
    op_name = re.search(r'op_name="([^"]*)"', rest)
    if op_name:
      layers[name.replace(".", "_")] = layer_of(op_name.group(1))
    call = re.match(r"\s*([a-z][\w\-]*)\(", rest[type_end:])
    if call and call.group(1) in ("fusion", "custom-call", "copy"):
      open_at = type_end + call.end() - 1
      calls[name] = rest[open_at + 1:_closing(rest, open_at)]
  sizes = {}
  for name, operands in calls.items():
    operand_bytes = 0
    for operand in _top_level_items(operands):
      operand = re.sub(r"/\*.*?\*/", "", operand).strip()
      if _SHAPE.search(operand):  # some dumps print "bf16[...]{...} %name"
        operand_bytes += _shape_bytes(operand)
        continue
      source, _, index = operand.lstrip("%").partition("#")
      elements = element_bytes.get(source, [])
      operand_bytes += (elements[int(index)] if index and int(index) < len(elements)
                        else sum(elements))
    result = sum(element_bytes[name])
    # Kernel names in traces spell the HLO name's dots as underscores.
    sizes[name.replace(".", "_")] = result + operand_bytes
  return sizes, layers


def main(argv):
  if len(argv) != 2:
    common.fail("usage: launch/profile_summary.py <trace folder or .xplane.pb> [--top=N]")
  sizes, layers = hlo_operand_bytes(FLAGS.hlo) if FLAGS.hlo else ({}, {})
  for path in _xplane_files(argv[1]):
    print(f"== {path}")
    for plane, (totals, calls) in kernel_times(path).items():
      total = sum(totals.values())
      print(f"{plane}: {total / 1e9:.2f} ms of kernels in {sum(calls.values())} launches")
      by_kind = collections.Counter()
      for name, ps in totals.items():
        by_kind[kind_of(name)] += ps
      print("  by kind: " + ", ".join(f"{kind} {100 * ps / total:.0f}%"
                                      for kind, ps in by_kind.most_common()))
      if sizes:
        known = sum(ps for name, ps in totals.items() if name in sizes)
        moved = sum(sizes[name] * calls[name] for name in totals if name in sizes)
        print(f"  kernels found in the HLO: {100 * known / total:.0f}% of the time, "
              f"{moved / 1e9:.1f} GB of operands and results, {moved / (known / 1e12) / 1e9:.0f} GB/s")
      if layers:
        by_layer = collections.Counter()
        for name, ps in totals.items():
          by_layer[layers.get(name, "unnamed")] += ps
        print("  by layer: " + ", ".join(f"{layer} {100 * ps / total:.1f}%"
                                         for layer, ps in by_layer.most_common(12)))
      for name, ps in totals.most_common(FLAGS.top):
        line = f"  {100 * ps / total:5.1f}%  {ps / 1e9:8.3f} ms  {calls[name]:5d}x  "
        if sizes:
          line += (f"{sizes[name] / 1e6:8.1f} MB {sizes[name] * calls[name] / (ps / 1e12) / 1e9:6.0f} GB/s  "
                   if name in sizes else " " * 26)
        print(line + name[:110])


if __name__ == "__main__":
  common.run(main)
