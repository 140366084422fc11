"""Where the device time of a `jax.profiler` trace goes: kernels grouped by name.

  python launch/profile_summary.py <trace folder or .xplane.pb> [--top=25]

Reads the XSpace protobuf that `jax.profiler.trace` writes (parsed with the proto
classes TensorFlow ships, so this runs where TensorFlow is installed) and prints, per
GPU plane, total kernel time, the share of each kernel name, and the number of calls.
"""

import collections
import glob
import os

import common
from absl import app, flags

flags.DEFINE_integer("top", 25, "kernels listed per device")
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


KINDS = (("matmul", ("gemm", "cutlass", "cublas", "dot")),
         ("copy / scan stacking", ("memcpy", "copy", "dynamic_update_slice", "memset")),
         ("reduction", ("reduce",)),
         ("elementwise", ("",)))


def kind_of(name: str) -> str:
  """Coarse class of an XLA GPU kernel, from the fusion names XLA gives them."""
  lowered = name.lower()
  return next(kind for kind, marks in KINDS if any(mark in lowered for mark in marks))


def main(argv):
  if len(argv) != 2:
    common.fail("usage: launch/profile_summary.py <trace folder or .xplane.pb> [--top=N]")
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
      for name, ps in totals.most_common(FLAGS.top):
        print(f"  {100 * ps / total:5.1f}%  {ps / 1e9:8.3f} ms  {calls[name]:5d}x  {name[:110]}")


if __name__ == "__main__":
  common.run(main)
