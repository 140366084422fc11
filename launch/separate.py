"""Separate your own recording into one wav per talker:

  python launch/separate.py --pretrained=mono mix.wav [--out=dir]          # a shipped model
  python launch/separate.py --workdir=runs/bilateral mix.wav [--checkpoint=latest]
  python launch/separate.py --config=configs/bilateral.py --workdir=runs/bilateral mix.wav

Writes <out>/<stem>_talker1.wav, _talker2.wav, ... (default: beside the input), in the
input's sample format and at its level. The wav may have exactly the model's input channels
(in config.data.input_channels order) or all six channels of the CI array (the model's
channels are picked by name); any sample rate is resampled to the model's and back; any
length is processed in overlapping chunks that keep one talker per stream. A silent input
gives silent outputs (and a warning); NaN/inf samples are refused. The output folder is
checked before any work starts. Several input files may be given.
"""

import os

from spatialsep_jax.launch import common
from absl import flags

_CONFIG = common.define_config_flags()
flags.DEFINE_string("pretrained", None, "a model in pretrained/ (e.g. mono) or an exported folder")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint of --workdir")
flags.DEFINE_string("out", None, "output folder (default: next to each input)")
flags.DEFINE_integer("batch_size", 4, "chunks separated at once")
flags.DEFINE_bool("all_outputs", False, "write every output of the model, the extra ones too "
                  "(a noise-aware model's noise estimate), as _talker<k>.wav")
flags.DEFINE_bool("stream", False, "causal models with a streaming core (CNUNet): process the "
                  "file hop by hop with carried state instead of in chunks (equals the offline "
                  "output; spatialsep_jax/streaming.py)")
flags.DEFINE_integer("stream_hops", 1, "hops per streaming call (--stream)")
FLAGS = flags.FLAGS


def stream_file(separator, path: str, out_dir: str) -> list[str]:
  """--stream: the whole file through `streaming.enhance` in pieces of --stream_hops hops."""
  from data_pipeline import corpus_base
  from spatialsep_jax import inference, streaming
  from spatialsep_jax.separator import write_streams
  if not hasattr(separator.module, "core"):
    raise ValueError(f"--stream needs a causal model with a streaming core (CNUNet); "
                     f"{separator.source} has none: leave --stream out")
  audio, rate, subtype = inference.read_audio(path)
  inference.check_finite(audio, path)
  audio = inference.select_channels(audio, separator.input_channels, path)
  model_rate = separator.sample_rate
  if rate != model_rate:
    audio = corpus_base.resample(audio, rate, model_rate, what=path)
  enhanced = streaming.enhance(separator.module, separator.variables, audio[None],
                               hops_per_call=FLAGS.stream_hops)
  if rate != model_rate:
    enhanced = corpus_base.resample(enhanced[0], model_rate, rate, what="the output")[None]
  stem = os.path.splitext(os.path.basename(path))[0]
  return write_streams(enhanced, rate, out_dir, stem, subtype)


def load_separator(config=None):
  from spatialsep_jax.separator import Separator, pretrained_names
  if FLAGS.pretrained:
    if config is not None or FLAGS.workdir:
      raise ValueError("give either --pretrained or --workdir/--config, not both")
    return Separator.from_pretrained(FLAGS.pretrained, batch_size=FLAGS.batch_size)
  if config is None and not FLAGS.workdir:
    names = pretrained_names()
    raise ValueError("say which model: --pretrained=NAME"
                     + (f" ({', '.join(names)})" if names else "")
                     + " or --workdir=<a training run> [--config=<its config>]")
  workdir = FLAGS.workdir or common.default_workdir(config)
  return Separator.from_workdir(workdir, FLAGS.checkpoint, config, batch_size=FLAGS.batch_size)


def main(argv):
  inputs = argv[1:]
  if not inputs:
    common.fail("give the recording(s) to separate: launch/separate.py --pretrained=NAME in.wav")
  common.setup_logging()
  from spatialsep_jax import inference
  # Everything that can be checked is checked before the model is loaded or run.
  for path in inputs:
    inference.read_audio(path)
  out_dirs = {path: inference.check_output_folder(
      FLAGS.out or os.path.dirname(os.path.abspath(path))) for path in inputs}
  separator = load_separator(_CONFIG.value)
  if FLAGS.all_outputs:
    separator.num_sources += int(separator.config.model.get("extra_outputs", 0))
  print(f"separating with {separator.source} ({separator.num_sources} talkers, "
        f"{separator.sample_rate} Hz, channels {', '.join(separator.input_channels)})")
  for path in inputs:
    targets = (stream_file(separator, path, out_dirs[path]) if FLAGS.stream
               else separator.separate_file(path, out_dirs[path]))
    for target in targets:
      print(target)


if __name__ == "__main__":
  common.run(main)
