"""Orbax checkpoints: the latest state for resuming and the best-k by validation loss.

Two managers under ``<workdir>/checkpoints``:
  ``latest/``  the most recent train state + loader position (resume, preemption);
  ``best/``    the ``keep_best`` states with the lowest validation loss (evaluation).
Orbax writes each step to a temporary directory and renames it when complete,
so a kill during a save never damages an earlier checkpoint.
"""

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir: str, keep_best: int):
    root = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.latest = ocp.CheckpointManager(
        os.path.join(root, "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(root, "best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep_best, best_fn=lambda m: m["val_loss"], best_mode="min",
            create=True))

  def latest_step(self):
    return self.latest.latest_step()

  def save_latest(self, step: int, state, loader_state: dict, extra: dict, force=False):
    self.latest.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({"loader": loader_state, **extra})),
        force=force)

  def save_best(self, step: int, state, val_loss: float, extra: dict):
    self.best.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({"val_loss": float(val_loss), **extra})),
        metrics={"val_loss": float(val_loss)})

  def best_steps(self) -> list[int]:
    return list(self.best.all_steps())

  def delete_best(self, step: int) -> None:
    self.best.delete(step)

  def latest_meta(self) -> dict:
    """The metadata saved with the latest checkpoint (identity, schedule, best so far)."""
    step = self.latest.latest_step()
    return dict(self.latest.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def restore_latest(self, abstract_state):
    """Returns (state, meta) of the latest checkpoint, shardings as in abstract_state."""
    return _restore(self.latest, self.latest.latest_step(), abstract_state)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def _restore(manager, step, abstract_state):
  restored = manager.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


def restore_params(workdir: str, abstract_state, which: str = "best"):
  """Restores a state from ``best`` (lowest val loss) or ``latest`` for evaluation.

  Returns (state, meta, step). Raises a one-line error when there is none.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints", which))
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"no checkpoints in {directory}; train first with launch/train.py --workdir={workdir}")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          best_fn=(lambda m: m["val_loss"]) if which == "best" else None, best_mode="min"))
  step = manager.best_step() if which == "best" else manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no complete checkpoint in {directory}; train longer or use --checkpoint=latest")
  state, meta = _restore(manager, step, abstract_state)
  manager.close()
  return state, meta, step


def abstract_like(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
