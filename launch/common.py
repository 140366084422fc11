"""Shared command-line plumbing for the `launch/` verbs (absl flags + ml_collections configs)."""

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from spatialsep_jax import configs as _configs_package

# The folder that holds launch/ and configs/: the repository, or the installed package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.dirname(os.path.abspath(_configs_package.__file__))


def define_config_flags(workdir_default: str | None = None):
  config = config_flags.DEFINE_config_file(
      "config", None, "configs/<name>.py[:variant]; override any field with --config.a.b=value",
      lock_config=True)
  flags.DEFINE_string("workdir", workdir_default,
                      "where this run's outputs, checkpoints and logs go")
  return config


def setup_logging():
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  _quiet_after_disk_full()


class _DiskFullEcho(logging.Filter):
  """After a write fails for lack of space, background writers (orbax's save threads) log the
  same failure with long tracebacks, and their event loops print hundreds of 'Event loop is
  closed' tracebacks while they shut down. The first such record is kept as one line; the
  rest are dropped, and the verb's own one-line error says what to do."""
  seen = False

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    from spatialsep_jax import io_safety
    if (error is not None and io_safety.is_disk_full(error)) or io_safety.is_disk_full(
        Exception(record.getMessage())):
      if _DiskFullEcho.seen:
        return False
      _DiskFullEcho.seen = True
      record.msg, record.args, record.exc_info, record.exc_text = (
          f"a background write failed: {' '.join(str(error or record.getMessage()).split())[:200]}",
          None, None, None)
      return True
    return not (_DiskFullEcho.seen and record.levelno >= logging.ERROR
                and "orbax" in (record.pathname or ""))


def _quiet_after_disk_full():
  if getattr(_quiet_after_disk_full, "installed", False):
    return
  _quiet_after_disk_full.installed = True
  echo = _DiskFullEcho()
  for name in ("", "absl"):
    logging.getLogger(name).addFilter(echo)
    for handler in logging.getLogger(name).handlers:
      handler.addFilter(echo)
  previous_hook = sys.excepthook

  def hook(kind, value, traceback):
    # Printed by tensorstore callbacks into event loops orbax has already closed (after a
    # failed write, before its error is logged): shutdown noise, never the error itself.
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous_hook(kind, value, traceback)

  sys.excepthook = hook
  previous_unraisable = sys.unraisablehook

  def unraisable_hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous_unraisable(unraisable)

  sys.unraisablehook = unraisable_hook
  import threading
  previous_thread_hook = threading.excepthook

  def thread_hook(args):
    if _DiskFullEcho.seen and isinstance(args.exc_value, RuntimeError):
      return
    previous_thread_hook(args)

  threading.excepthook = thread_hook


def default_workdir(config) -> str:
  return os.path.join("runs", config.name)


def fail(message: str) -> None:
  """Prints a one-line error and exits with status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def config_variant() -> str:
  """The `:variant` part of --config on the command line ('' when none)."""
  for arg in sys.argv[1:]:
    if arg.startswith("--config=") and ":" in arg:
      return arg.split(":", 1)[1]
  return ""


def apply_overrides(config, items) -> None:
  """Applies `a.b=value` items (the form of `--config.a.b=value`) to `config` in place,
  parsing each value as the type the field already has."""
  import ast
  for item in items:
    key, _, value = item.partition("=")
    node = config
    *parents, leaf = key.split(".")
    try:
      for part in parents:
        node = node[part]
      current = node[leaf]
    except KeyError:
      fail(f"no config field {key!r}; fields and their types are in configs/base.py")
    node[leaf] = (ast.literal_eval(value) if isinstance(current, (tuple, list, bool))
                  else type(current)(value) if current is not None else value)


def command_line_overrides() -> list[str]:
  """The `a.b=value` parts of this command's `--config.a.b=value` flags."""
  return [arg[len("--config."):] for arg in sys.argv[1:] if arg.startswith("--config.")]


def split_entry(entry: str, variant: str = "") -> tuple[str, str]:
  """A config entry as study.py and benchmark.py take them, 'ipd:uni+sepnorm' ->
  ('ipd', the get_config arg 'gpu,uni,sepnorm' for variant 'gpu')."""
  name, _, tokens = entry.partition(":")
  if not os.path.exists(os.path.join(CONFIGS_DIR, f"{name}.py")):
    fail(f"no configs/{name}.py; give names of files in configs/")
  return name, ",".join(filter(None, [variant] + tokens.split("+")))


def load_named_config(entry: str, variant: str = "", overrides=()):
  """configs/<name>.py's get_config(variant) with `a.b=value` overrides applied; the entry
  may carry extra variant tokens (`split_entry`)."""
  import importlib
  name, variant = split_entry(entry, variant)
  config = importlib.import_module(f"spatialsep_jax.configs.{name}").get_config(variant)
  apply_overrides(config, overrides)
  return config


def resolve_config_argument(argv: list[str]) -> list[str]:
  """`--config=configs/<name>.py[:variant]` names the shipped config from any folder: when no
  such file is under the current folder, it is read from the installed `spatialsep_jax.configs`.
  A user's own config file (any other path) is left as given."""
  resolved = []
  for arg in argv:
    if arg.startswith("--config="):
      path, colon, variant = arg[len("--config="):].partition(":")
      shipped = os.path.join(CONFIGS_DIR, os.path.basename(path))
      if (not os.path.exists(path) and os.path.dirname(os.path.normpath(path)) == "configs"
          and os.path.exists(shipped)):
        arg = f"--config={shipped}{colon}{variant}"
    resolved.append(arg)
  return resolved


def _parse_flags(argv):
  argv = resolve_config_argument(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Traceback (most recent call last)" in text:
      # A config file's get_config raised (e.g. an unknown :variant): its last line says why.
      head = text.split(":", 2)[:2]
      last = [line for line in text.splitlines() if line.strip()][-1].strip()
      fail(f"{':'.join(head)}: {last}")
    fail(f"{' '.join(text.split())}; run with --help for the flags")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a field that does not exist or has
    # another type; one line instead of a traceback.
    detail = str(e).strip("\"'")
    fail(f"bad --config override ({detail}); fields and their types are in configs/base.py")


def run(main):
  """absl's app.run with one-line errors for bad flags, config overrides and every expected
  error of the verb (`expected_error_message`); unexpected errors keep their traceback, and
  SPATIALSEP_TRACEBACK=1 shows it for expected ones too."""
  from absl import app
  app.run(_guarded(main), flags_parser=_parse_flags)


def _guarded(main):
  def guarded_main(argv):
    try:
      return main(argv)
    except (SystemExit, KeyboardInterrupt):
      raise
    except Exception as e:  # noqa: BLE001  (sorted into expected / unexpected below)
      message = expected_error_message(e)
      if message is None or os.environ.get("SPATIALSEP_TRACEBACK"):
        raise
      from spatialsep_jax import io_safety
      if io_safety.is_disk_full(e):  # orbax's abandoned writes warn again at exit
        import warnings
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
      fail(message)
  return guarded_main


def expected_error_message(error: BaseException) -> str | None:
  """One line naming the problem and the fix for errors that mean bad input or a bad
  environment (config, data, paths, a full disk, a locked workdir); None for the others."""
  from spatialsep_jax import extras, io_safety
  text = " ".join(str(error).split())
  if isinstance(error, extras.MissingExtraError):
    return text
  if io_safety.is_disk_full(error):
    return text if isinstance(error, io_safety.DiskFullError) else io_safety.disk_full_message(error)
  if isinstance(error, io_safety.WorkdirLocked):
    return text
  if isinstance(error, OSError) and "Failed loading config file" in str(error):
    return _config_load_message(error)
  if isinstance(error, PermissionError):
    where = error.filename or text
    return f"permission denied: {where}; choose a folder you can write (--workdir / --out)"
  if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        FileExistsError)):
    if text.startswith("[Errno") and error.filename:  # a bare OS error: say what it means
      where = error.filename
      return {
          NotADirectoryError: f"{where}: a part of this path is a file, not a folder; give "
                              "another path (--workdir, --out, data.shards_dir)",
          FileExistsError: f"{where} exists and is a file, not a folder; give another path",
          IsADirectoryError: f"{where} is a folder where a file is expected; give a file",
          FileNotFoundError: f"{where} does not exist; check the path",
      }[type(error)]
    return text
  if isinstance(error, ValueError):
    return text or f"bad value ({type(error).__name__})"
  return None


def _config_load_message(error: OSError) -> str:
  detail = str(error)
  path = next((line.strip() for line in detail.splitlines()
               if line.strip().endswith(".py") and "Attempted" not in line), None)
  if path and not os.path.exists(path) and not os.path.exists(os.path.join(ROOT, path)):
    names = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR)
                   if f.endswith(".py") and not f.startswith("_") and f not in ("base.py",))
    return (f"config file {path} does not exist; give --config=configs/<name>.py[:variant] "
            f"with <name> one of {', '.join(names)}")
  last = " ".join(detail.splitlines()[-1].split())
  return f"cannot load --config ({last}); check the config file and its :variant"


USER_ERRORS = (ValueError, FileNotFoundError)


def call_or_fail(function, *args, errors=USER_ERRORS, **kwargs):
  """Calls `function`; the errors that mean bad input become one-line messages (exit 2)."""
  try:
    return function(*args, **kwargs)
  except errors as e:
    fail(expected_error_message(e) or " ".join(str(e).split()))


def print_evaluation(summary: dict) -> None:
  from spatialsep_jax import evaluation
  print(evaluation.summary_markdown(summary))
  print(f"rows, summary and plots in {summary['out_dir']}")
