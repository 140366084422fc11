"""Training metrics to TensorBoard event files and a JSON-lines log.

TensorBoard's own event writer is used directly (it needs no TensorFlow, which
the GPU hosts lack); every scalar also goes to ``metrics.jsonl`` so reports and
tests can read runs without TensorBoard.
"""

import json
import os
import time

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
  """Writes scalars from process 0 only; other processes get a no-op writer."""

  def __init__(self, logdir: str):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    os.makedirs(logdir, exist_ok=True)
    self._events = EventFileWriter(logdir)
    self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self._active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    self._events.add_event(event_pb2.Event(step=int(step), wall_time=time.time(), summary=summary))
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")

  def flush(self) -> None:
    if self._active:
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self._active:
      self._events.close()
      self._jsonl.close()


def read_metrics(logdir: str) -> list[dict]:
  """Reads back ``metrics.jsonl`` (one dict per write)."""
  path = os.path.join(logdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
