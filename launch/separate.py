"""Separate your own recording into one wav per talker:
`python launch/separate.py --config=configs/bilateral.py --workdir=runs/bilateral input.wav [--out=dir]`.

The wav may have exactly the model's input channels (in config.data.input_channels
order) or all six channels of the CI array (the model's channels are picked by
name); any sample rate is resampled to the model's and back; any length is
processed in overlapping chunks.
"""

import os

import common  # noqa: F401  (sets sys.path)
from absl import app, flags

_CONFIG = common.define_config_flags()
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint to use")
flags.DEFINE_string("out", None, "output folder (default: next to the input)")
FLAGS = flags.FLAGS


def load_input(path: str, config):
  """[T, C_in] float32 at the model's rate, and the file's own rate."""
  import numpy as np
  import soundfile
  from data_pipeline.array import CHANNEL_NAMES
  from spatialsep_jax import inference
  try:
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError) as e:
    raise ValueError(f"cannot read {path} as audio ({e}); give a wav/flac file") from None
  wanted = tuple(config.data.input_channels)
  if audio.shape[1] == len(CHANNEL_NAMES) and len(wanted) != len(CHANNEL_NAMES):
    audio = audio[:, [CHANNEL_NAMES.index(c) for c in wanted]]
  elif audio.shape[1] != len(wanted):
    raise ValueError(
        f"{path} has {audio.shape[1]} channels but this model takes {len(wanted)} {wanted}; give a "
        f"{len(wanted)}-channel or a 6-channel ({', '.join(CHANNEL_NAMES)}) file, or use a config "
        "with matching data.input_channels")
  if audio.shape[0] == 0:
    raise ValueError(f"{path} holds no samples")
  return inference.resample(audio, rate, int(config.data.sample_rate)), rate, np


def main(argv):
  if len(argv) != 2:
    common.fail("give exactly one input file: launch/separate.py --config=... --workdir=... in.wav")
  common.setup_logging()
  import soundfile
  from spatialsep_jax import evaluation, inference
  config = _CONFIG.value
  workdir = FLAGS.workdir or common.default_workdir(config)
  path = argv[1]
  try:
    audio, rate, np = load_input(path, config)
    programs, params, step = evaluation.load_trained(config, workdir, FLAGS.checkpoint)
  except (ValueError, FileNotFoundError) as e:
    common.fail(str(e))
  separate = evaluation.make_separate_fn(config, programs.model)
  peak = float(np.abs(audio).max()) or 1.0
  segment = int(round(config.data.segment_seconds * config.data.sample_rate))
  estimates = inference.separate_long(lambda x: separate(params, x), audio * (0.9 / peak), segment)
  out_dir = FLAGS.out or os.path.dirname(os.path.abspath(path))
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.splitext(os.path.basename(path))[0]
  for s, estimate in enumerate(estimates[:config.data.num_sources]):
    estimate = inference.resample(estimate[:, None], int(config.data.sample_rate), rate)[:, 0]
    estimate = estimate * (0.9 / max(float(np.abs(estimate).max()), 1e-9))
    target = os.path.join(out_dir, f"{stem}_talker{s + 1}.wav")
    soundfile.write(target, estimate, rate)
    print(target)


if __name__ == "__main__":
  common.run(main)
