"""DNSMOS of audio files (SIG / BAK / OVRL / P.808 MOS, 1..5; offline, speechmos's ONNX
models): `python launch/dnsmos.py mix.wav out/mix_talker1.wav ... [--json=scores.json]`.

A learned, reference-free prediction of listener ratings; files of several channels are
scored on their first channel.
"""

from spatialsep_jax.launch import common
from absl import flags

flags.DEFINE_string("json", None, "also write the scores to this JSON file")
FLAGS = flags.FLAGS


def main(argv):
  paths = argv[1:]
  if not paths:
    common.fail("give the audio files to score: launch/dnsmos.py a.wav [b.wav ...]")
  common.setup_logging()
  from spatialsep_jax import dnsmos, inference, io_safety
  for path in paths:
    inference.read_audio(path)  # every input checked before the models load
  rows = [dnsmos.score_file(path) for path in paths]
  print("| file | seconds | SIG | BAK | OVRL | P.808 |\n| --- | --- | --- | --- | --- | --- |")
  for row in rows:
    print(f"| {row['file']} | {row['seconds']:.1f} | {row['sig']:.2f} | {row['bak']:.2f} | "
          f"{row['ovrl']:.2f} | {row['p808']:.2f} |")
  if FLAGS.json:
    io_safety.atomic_write_json(FLAGS.json, rows)


if __name__ == "__main__":
  common.run(main)
