"""Write rendered mixtures as wav files (all six array channels, plus references), e.g. to try
`launch/separate.py` on them: `python launch/export_mixture.py --config=configs/mono.py
--split=test --index=0 --out=mix.wav [--rate=16000]`.
"""

import os

from spatialsep_jax.launch import common
from absl import app, flags

_CONFIG = common.define_config_flags()
flags.DEFINE_string("split", "test", "split to read")
flags.DEFINE_integer("index", 0, "example index within the split")
flags.DEFINE_string("out", "mixture.wav", "output wav (references go next to it)")
flags.DEFINE_integer("rate", None, "write at this sample rate instead of the data's")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np
  import soundfile
  from data_pipeline import dataset, shards
  from spatialsep_jax import inference
  config = _CONFIG.value
  directory = dataset.shards_dir(config)
  manifest, source = common.call_or_fail(shards.open_split, directory, FLAGS.split)
  if not 0 <= FLAGS.index < len(source):
    common.fail(f"--index={FLAGS.index} is outside the {len(source)} examples of {FLAGS.split}")
  record = shards.decode_record(source[FLAGS.index], shards.spec_from_manifest(manifest))
  rate = int(manifest["sample_rate"])
  out_rate = FLAGS.rate or rate
  stem, _ = os.path.splitext(FLAGS.out)
  mixture = inference.resample(record["mixture"].astype(np.float32), rate, out_rate)
  soundfile.write(FLAGS.out, mixture, out_rate, subtype="FLOAT")
  for s, reference in enumerate(record[config.data.target]):
    audio = inference.resample(reference.astype(np.float32)[:, None], rate, out_rate)
    soundfile.write(f"{stem}_reference{s + 1}.wav", audio, out_rate, subtype="FLOAT")
  print(f"{FLAGS.out}: {mixture.shape[1]} channels ({', '.join(manifest['channel_names'])}), "
        f"{out_rate} Hz; references {stem}_reference*.wav")


if __name__ == "__main__":
  common.run(main)
