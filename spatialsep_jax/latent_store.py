"""Stage-1 latents of CNUNet stored per utterance and joined into stage-2 batches.

Stage 1 (configs/cnunet_tb_stage1.py) fuses the frozen teacher's embeddings of the clean
target; its bottleneck outputs ("latent" [N, F_b, P, C] per example) are stored for every
example of the train and val splits by `store` (launch/cnunet_latents.py):

  <dir>/latents_train.npy, latents_val.npy   float16 [num_examples, N, F_b, P, C], row =
                                             example_id (the index within the split)
  <dir>/latents.json                         the stage-1 run, shapes, splits

Stage 2 (configs/cnunet_tb_ts.py) sets `config.data.cnunet_latents = <dir>`; the loader's
batch-join hook (`data_pipeline.loader.register_batch_join`) then adds
`batch["cnunet_latent"]` [B, N, F_b, P, C] (float32) looked up by `example_id`, and the
"latent_replication" loss term (spectral_terms.py) compares the model's latent with it.
"""

import os

import numpy as np

from data_pipeline import loader as loader_lib
from spatialsep_jax import io_safety
from spatialsep_jax.spectral_terms import LATENT_KEY

SPLITS = ("train", "val")


def latent_file(directory: str, split: str) -> str:
  return os.path.join(directory, f"latents_{split}.npy")


class LatentJoin:
  """Picklable join: example ids [b] -> {"cnunet_latent": [b, N, F_b, P, C] float32}."""

  def __init__(self, path: str, shape: tuple, num_examples: int):
    self.path, self.shape, self.num_examples = path, tuple(shape), num_examples
    self.signature = {LATENT_KEY: ((None,) + self.shape, np.dtype(np.float32))}
    self._array = None

  def __getstate__(self):
    return {**self.__dict__, "_array": None}

  def __call__(self, example_ids):
    if self._array is None:
      self._array = np.load(self.path, mmap_mode="r")
    ids = np.asarray(example_ids, np.int64)
    return {LATENT_KEY: np.asarray(self._array[ids], np.float32)}


def _factory(config, split, manifest):
  directory = config.data.get("cnunet_latents", "")
  if not directory or split not in SPLITS:
    return None
  path = latent_file(directory, split)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"config.data.cnunet_latents={directory!r} has no {os.path.basename(path)}; store the "
        "stage-1 latents first: python launch/cnunet_latents.py "
        "--config=configs/cnunet_tb_stage1.py --workdir=<stage-1 run> --out=" + directory)
  array = np.load(path, mmap_mode="r")
  expected = int(sum(s["num_examples"] for s in manifest["splits"][split]))
  if array.shape[0] != expected:
    raise ValueError(f"{path} holds {array.shape[0]} latents but the {split} split has "
                     f"{expected} examples; store them again from the same data "
                     "(launch/cnunet_latents.py)")
  return LatentJoin(path, array.shape[1:], expected)


loader_lib.register_batch_join(_factory)


def store(config, workdir: str, out_dir: str, splits=SPLITS, batch_size: int = 8,
          progress: bool = True) -> dict:
  """Runs the trained stage-1 model of `workdir` (best checkpoint) over every example of
  `splits`, with the clean target as its teacher's input, and writes the latents."""
  import jax
  import jax.numpy as jnp
  from spatialsep_jax import evaluation
  programs, variables, step = evaluation.load_trained(config, workdir)
  model = programs.model
  if not model.train_inputs:
    raise ValueError(f"{config.name} reads no clean signal (config.model.teacher is empty); "
                     "store latents of a stage-1 run (configs/cnunet_tb_stage1.py)")

  @jax.jit
  def latent_of(variables, mixture, references):
    outputs, _ = model.apply(variables, mixture, references=references)
    return outputs["latent"]

  os.makedirs(out_dir, exist_ok=True)
  shards_dir = config.data.shards_dir
  info = {"workdir": os.path.abspath(workdir), "step": step, "config": config.name,
          "splits": {}}
  for split in splits:
    loader = loader_lib.make_loader(config, shards_dir, split, train=False,
                                    batch_size=batch_size, process_index=0, process_count=1)
    stored, ids = None, []
    count = loader.assembler.num_examples if hasattr(loader, "assembler") else None
    for batch in loader:
      references = {key: jnp.asarray(batch[key], jnp.float32) for key in model.train_inputs}
      latent = np.asarray(latent_of(variables, jnp.asarray(batch["mixture"], jnp.float32),
                                    references))
      if stored is None:
        total = count or int(sum(s["num_examples"] for s in
                                 loader_lib.shards.read_manifest(shards_dir)["splits"][split]))
        stored = np.lib.format.open_memmap(latent_file(out_dir, split), mode="w+",
                                           dtype=np.float16, shape=(total,) + latent.shape[1:])
      stored[batch["example_id"]] = latent.astype(np.float16)
      ids.extend(int(i) for i in batch["example_id"])
      if progress:
        print(f"[latents] {split}: {len(ids)} examples", end="\r", flush=True)
    stored.flush()
    info["splits"][split] = {"examples": len(ids), "shape": list(stored.shape)}
  # Written last and atomically: its presence says every latent file is complete.
  io_safety.atomic_write_json(os.path.join(out_dir, "latents.json"), info)
  return info


__all__ = ["LatentJoin", "latent_file", "store"]
