"""Optional parts of the package (`pip install 'spatialsep-jax[<extra>]'`) and the one-line
message that names the extra when a missing one is needed.

| extra | brings | needed for |
| --- | --- | --- |
| `pesq` | pesq (a C extension built at install) | the PESQ metric |
| `plots` | matplotlib | condition plots of evaluation, data summaries and the study report |
| `sofa` | sofar (netCDF4) | measured responses in SOFA files (`data.measured_sofa`) |
| `tensorboard` | tensorboard | viewing the curves (`tensorboard --logdir runs/`); writing needs no extra |
| `tf` | tensorflow-cpu | the tf.data loader (`data.loader='tfdata'`; `auto` picks Grain without it) |
| `quality` | speechmos, onnxruntime, librosa | DNSMOS of outputs without a clean reference |
| `all` | every extra above | |
| `test` | all of it plus pytest | the test suite (`bash tests/run.sh`) |
"""

import importlib
import logging
import types

PROJECT = "spatialsep-jax"


class MissingExtraError(ImportError):
  """A part of the package needs an extra that is not installed; the message says which."""


def install_hint(extra: str) -> str:
  return f"pip install '{PROJECT}[{extra}]' (in a clone: pip install -e '.[{extra}]')"


def require(module: str, extra: str, purpose: str) -> types.ModuleType:
  """`module` imported, or MissingExtraError: '<purpose> needs the <extra> extra: pip ...'."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise MissingExtraError(f"{purpose} needs the '{extra}' extra ({module} is not installed: "
                            f"{error.name or module}); {install_hint(extra)}") from None


_warned: set[tuple[str, str]] = set()


def available(module: str, extra: str, purpose: str) -> bool:
  """Whether `module` imports; when not, logs once per process that `purpose` is skipped and
  which extra brings it (for optional outputs such as plots)."""
  try:
    importlib.import_module(module)
    return True
  except ImportError:
    if (module, purpose) not in _warned:
      _warned.add((module, purpose))
      logging.warning("%s skipped: it needs the '%s' extra; %s", purpose, extra,
                      install_hint(extra))
    return False
