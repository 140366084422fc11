"""Packaging: what `pip install` puts on the path (no top-level `configs`), the console scripts,
the config loader from any folder (shipped configs and a user's own file) and the one-line
messages for missing extras. A fresh-venv install is too slow for the suite (measured by hand,
see the README)."""

import importlib
import importlib.metadata
import importlib.util
import os
import tomllib

import pytest
from absl import flags
from ml_collections import config_flags

from spatialsep_jax import extras
from spatialsep_jax.launch import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"spatialsep-train": "train", "spatialsep-evaluate": "evaluate",
           "spatialsep-separate": "separate", "spatialsep-render": "render"}


def _pyproject():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def test_installed_top_level_names_are_the_projects_own():
  top_level = importlib.metadata.distribution("spatialsep-jax").read_text("top_level.txt")
  assert sorted(top_level.split()) == ["data_pipeline", "spatialsep_jax"]
  assert importlib.import_module("spatialsep_jax.configs.base").__file__ == os.path.join(
      ROOT, "configs", "base.py")


def test_every_package_folder_is_listed_for_the_wheel():
  """A sub-package added under a mapped folder (e.g. spatialsep_jax/models/x/) must be in
  [tool.setuptools] packages, or a wheel install silently lacks it."""
  setuptools = _pyproject()["tool"]["setuptools"]
  roots = {"spatialsep_jax": "spatialsep_jax", "data_pipeline": "data_pipeline",
           **setuptools["package-dir"]}
  found = set()
  for package, folder in roots.items():
    for directory, _, files in os.walk(os.path.join(ROOT, folder)):
      if "__init__.py" in files:
        relative = os.path.relpath(directory, os.path.join(ROOT, folder))
        found.add(package if relative == "." else f"{package}.{relative.replace(os.sep, '.')}")
  listed = set(setuptools["packages"])
  assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
  assert "configs" not in listed


def test_console_scripts_resolve_to_the_launch_verbs():
  points = {p.name: p for p in importlib.metadata.entry_points(group="console_scripts")
            if p.name.startswith("spatialsep-")}
  assert sorted(points) == sorted(SCRIPTS)
  for name, verb in SCRIPTS.items():
    assert points[name].value == f"spatialsep_jax.cli:{verb}" and callable(points[name].load())
    # Found, not imported: each verb defines the process's absl flags when imported.
    spec = importlib.util.find_spec(f"spatialsep_jax.launch.{verb}")
    assert os.path.samefile(spec.origin, os.path.join(ROOT, "launch", f"{verb}.py"))
    with open(spec.origin) as source:
      assert "\ndef main(argv):" in source.read()


def _load(argument):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(["prog", *common.resolve_config_argument([f"--config={argument}"])])
  return values.config


def test_shipped_configs_load_from_any_folder_and_user_configs_as_given(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ folder here
  config = _load("configs/mono.py:smoke")
  assert config.name == "mono" and config.train.num_steps == 6
  user = tmp_path / "configs" / "my_mono.py"  # the user's own file under a configs/ folder
  user.parent.mkdir()
  user.write_text("from spatialsep_jax.configs import mono\n\n\ndef get_config(arg=''):\n"
                  "  config = mono.get_config(arg)\n  config.name = 'my_mono'\n"
                  "  config.train.num_steps = 3\n  return config\n")
  config = _load("configs/my_mono.py:smoke")
  assert (config.name, config.train.num_steps) == ("my_mono", 3)
  assert common.resolve_config_argument(["--config=configs/nosuch.py"]) == [
      "--config=configs/nosuch.py"]  # left for the loader's own one-line error


def test_missing_extra_is_one_line_naming_it():
  with pytest.raises(extras.MissingExtraError) as error:
    extras.require("spatialsep_no_such_module", "pesq", "PESQ")
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith("PESQ needs the 'pesq' extra")
  assert "pip install 'spatialsep-jax[pesq]'" in message
  assert common.expected_error_message(error.value) == message


def test_documented_extras_exist():
  optional = _pyproject()["project"]["optional-dependencies"]
  for extra in ("pesq", "plots", "sofa", "tensorboard", "tf", "quality", "all", "test"):
    assert extra in optional and f"`{extra}`" in extras.__doc__
  assert "spatialsep-jax[all]" in optional["test"]
