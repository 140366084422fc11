"""summary.MetricWriter (tensorboardX) gives TensorBoard the same curves as the event writer it
replaced: read back with TensorBoard's own EventAccumulator, including a resume that purges the
steps written after the restored checkpoint."""

import sys
import time
import types

import numpy as np

if "tensorflow" not in sys.modules:
  # TensorBoard's own switch to its TensorFlow stub (the no_tensorflow build target): reading
  # event files then costs no 15-s TensorFlow import.
  sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402

from spatialsep_jax import summary  # noqa: E402

# Two sessions of one run: steps 1-6, killed, resumed from the checkpoint of step 4.
FIRST = [(step, {"loss/main": 1.0 / step, "lr": 1e-3, "val_sisdri": 0.5 * step})
         for step in range(1, 7)]
RESUMED = [(step, {"loss/main": -float(step), "lr": 5e-4, "val_sisdri": 10.0 + step})
           for step in range(5, 9)]


def _write_like_before(logdir, resume_step, rows):
  """The writer summary.py used before: TensorBoard's internal EventFileWriter, one Summary of
  simple values per step, a SessionLog START at resume_step + 1."""
  events = EventFileWriter(str(logdir))
  events.add_event(event_pb2.Event(
      step=resume_step + 1, wall_time=time.time(),
      session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
  for step, values in rows:
    events.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])))
  events.close()


def _write_with_metric_writer(logdir, resume_step, rows):
  writer = summary.MetricWriter(str(logdir), resume_step=resume_step)
  for step, values in rows:
    writer.write_scalars(step, values)
  writer.close()


def _curves(logdir):
  accumulator = event_accumulator.EventAccumulator(str(logdir))
  accumulator.Reload()
  return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def test_curves_match_the_previous_writer_through_a_purging_resume(tmp_path):
  for name, write in (("before", _write_like_before), ("now", _write_with_metric_writer)):
    write(tmp_path / name, 0, FIRST)
    write(tmp_path / name, 4, RESUMED)  # same second as the first session: no file clobbered
  before, now = _curves(tmp_path / "before"), _curves(tmp_path / "now")
  assert sorted(now) == ["loss/main", "lr", "val_sisdri"]
  assert now == before
  expected = [(step, np.float32(-step if step > 4 else 1.0 / step)) for step in range(1, 9)]
  assert now["loss/main"] == expected
  assert [row["step"] for row in summary.read_metrics(str(tmp_path / "now"))] == list(range(1, 9))
