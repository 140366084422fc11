"""Training metrics to TensorBoard event files and a JSON-lines log that survives kills.

Event files are written through tensorboardX's public `SummaryWriter` (it needs neither
TensorFlow, which the GPU hosts lack, nor TensorBoard, which only views them: the `tensorboard`
extra); every scalar also goes to ``metrics.jsonl`` so reports and tests can read runs without
TensorBoard. clu's metric writers were the other candidate: their TensorBoard writer needs
TensorFlow.

``metrics.jsonl`` is written one row at a time with a flush and fsync per row
(`io_safety.JsonlAppender`): a kill loses at most the row being written, and a torn last row
is dropped with a warning when the log is opened again. A resumed run passes the step it
restarts from (`resume_step`): rows after that step (written after the checkpoint it restores)
are dropped, so the log holds every step exactly once; TensorBoard gets a SessionLog START at
`resume_step + 1` (the writer's `purge_step`), which makes it discard the orphaned events of
those steps.
"""

import os
import time

import jax
import tensorboardX

from spatialsep_jax import io_safety

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Writes scalars from process 0 only; other processes get a no-op writer.

  resume_step: the step the run (re)starts from (0 for a fresh run). Rows with a larger step
    are dropped from an existing log. None keeps every complete row (e.g. for a reader that
    appends after the fact).
  fsync: fsync each row (the default; a row per `log_every` steps costs little).
  """

  def __init__(self, logdir: str, resume_step: int | None = None, fsync: bool = True):
    self._active = jax.process_index() == 0
    self.dropped = 0
    if not self._active:
      return
    self.path = os.path.join(logdir, METRICS_FILE)
    self._jsonl = io_safety.JsonlAppender(self.path, fsync=fsync)
    if resume_step is not None:
      self.dropped = self._jsonl.keep_only(lambda row: int(row.get("step", 0)) <= resume_step)
    # purge_step also at resume_step 0: events of a run killed before its first checkpoint.
    # The file name holds only the second and the host: the suffix keeps a writer opened
    # again within the same second (a quick resume) from truncating the earlier file.
    self._events = tensorboardX.SummaryWriter(
        logdir, purge_step=None if resume_step is None else int(resume_step) + 1,
        filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self._active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    # The JSON row first: it is the record the reports read, flushed before anything else.
    self._jsonl.append({"step": int(step), **values})
    wall_time = time.time()
    for tag, value in values.items():
      self._events.add_scalar(tag, value, global_step=int(step), walltime=wall_time)

  def flush(self) -> None:
    if self._active:
      self._events.flush()

  def close(self) -> None:
    if self._active:
      self._events.close()
      self._jsonl.close()


def read_metrics(logdir: str) -> list[dict]:
  """Reads back ``metrics.jsonl`` (one dict per write; a torn last line is ignored)."""
  return io_safety.read_jsonl(os.path.join(logdir, METRICS_FILE))
