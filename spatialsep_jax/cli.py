"""Console scripts (`spatialsep-train`, `-evaluate`, `-separate`, `-render`): each runs the
`main` of the launch verb of the same name (`launch/<verb>.py`, installed as
`spatialsep_jax.launch.<verb>`) with the same flags, from any folder."""

import importlib


def _run_verb(verb: str) -> None:
  from spatialsep_jax.launch import common
  module = importlib.import_module(f"spatialsep_jax.launch.{verb}")
  common.run(module.main)


def train() -> None:
  _run_verb("train")


def evaluate() -> None:
  _run_verb("evaluate")


def separate() -> None:
  _run_verb("separate")


def render() -> None:
  _run_verb("render")
