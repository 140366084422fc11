"""DNSMOS on the shipped mono model's own domain, as a yardstick for the real recording:
8 rendered test mixtures of the `:smoke` render (eSpeak voices, simulated rooms, no noise,
1 s each) laid end to end, their first talker's reference, and the separated stream PIT-matched
to it. `python reports/real_audio/synthetic_reference.py SHARDS_DIR [--out=reports/real_audio]`
(SHARDS_DIR: a `:smoke` render, e.g. `python launch/render.py --config=configs/mono.py:smoke`).
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("shards_dir")
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  from spatialsep_jax.configs import mono
  from data_pipeline import loader as loader_lib
  from spatialsep_jax import dnsmos, io_safety
  from spatialsep_jax.separator import Separator
  config = mono.get_config("smoke")
  config.data.shards_dir = args.shards_dir
  batch = next(iter(loader_lib.make_loader(config, args.shards_dir, "test", train=False,
                                           batch_size=8, process_index=0, process_count=1)))
  separator = Separator.from_pretrained("mono")
  mixtures, references, separated = [], [], []
  for mixture, sources in zip(batch["mixture"], batch["sources"]):
    mixture = np.asarray(mixture, np.float32)[:, 0]
    sources = np.asarray(sources, np.float32)
    streams = separator.separate(mixture)
    first = int(np.argmax(np.abs(streams @ sources[0])))
    mixtures.append(mixture)
    references.append(sources[0])
    separated.append(streams[first] * np.sign(streams[first] @ sources[0]))
  rate = separator.sample_rate
  scores = {name: dnsmos.score(np.concatenate(parts), rate, name) for name, parts in
            (("mixtures", mixtures), ("talker-1 references", references),
             ("talker-1 separated", separated))}
  io_safety.atomic_write_json(os.path.join(args.out, "dnsmos_synthetic_reference.json"), scores)
  for name, score in scores.items():
    print(f"| {name} | {score['seconds']:.1f} | {score['sig']:.2f} | {score['bak']:.2f} | "
          f"{score['ovrl']:.2f} | {score['p808']:.2f} |")


if __name__ == "__main__":
  main()
