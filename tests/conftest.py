"""Shared fixtures: one tiny real render (eSpeak corpus + pyroomacoustics bank) per test session."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def smoke_cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory, smoke_cache_dir):
  """(shards_dir, cache_dir) of the `:smoke` render shared by every configuration."""
  from spatialsep_jax.configs import ild_ipd
  from data_pipeline import dataset
  config = ild_ipd.get_config("smoke")
  config.data.cache_dir = smoke_cache_dir
  directory = str(tmp_path_factory.mktemp("smoke_shards"))
  dataset.render(config, directory, num_workers=2, progress=False)
  return directory, smoke_cache_dir


def smoke_config(module, shards_dir, cache_dir, arg="smoke", **overrides):
  """A `:smoke` config of `module` pointed at the session's shards, with dotted overrides."""
  config = module.get_config(arg)
  config.data.shards_dir = shards_dir
  config.data.cache_dir = cache_dir
  return with_overrides(config, **overrides)


def with_overrides(config, **overrides):
  """`config` with `section__field=value` overrides applied in place (and returned)."""
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split("__")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


# The suite runs tiny shapes, so compiling dominates its time: XLA's CPU backend without
# LLVM's optimisation levels compiles ~1/3 less CPU time (same programs, same results).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(*extra: str) -> str:
  """XLA_FLAGS for a test's subprocess: `extra` flags plus the suite's fast-compile flags."""
  return " ".join(extra + (FAST_COMPILE_FLAGS,))


def pytest_configure(config):
  if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()
  # Compiled programs are reused across tests and subprocesses (resume runs recompile the
  # same step); this keeps the suite inside its CPU time budget.
  cache = os.path.join(ROOT, ".cache", "jax_compilation_cache")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# Slowest files first (cold-cache durations on 2 cores): with whole files per xdist worker
# the suite's wall time is the busier worker's, so long files started last make the tail.
SLOW_FILES_FIRST = ("test_train.py", "test_cnunet.py", "test_study.py", "test_multiprocess.py",
                    "test_reliability.py", "test_nass.py", "test_streaming.py",
                    "test_deep_clustering.py")


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
