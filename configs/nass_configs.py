"""Noise-aware separation (NASS, seed 002) configurations: one helper for every backbone.

`get_config(arg)` of `configs/nass_*.py` takes comma-separated tokens:
  size      ``smoke`` (seconds on CPU), ``gpu`` (the accelerator run), none (a CPU demo);
  system    none = NASS (C+1 outputs, PIT over [s1, s2, n], patch-wise contrastive loss);
            ``baseline`` = the same backbone with C outputs, PIT over the talkers, no PCL;
            ``nopcl`` = the noise output without the contrastive term;
  ablation  (of the PCL, SPEC.md section 3) ``lambda1`` (weight 1 instead of 2), ``m1`` (one
            negative per query instead of all 256), ``n2s`` (direction noise -> speech);
            ``pclnorm`` (a project option, not the seed's): the PCL term's
            input_norm="standardize", each map's K sampled values standardised (statistics
            under stop-gradient) before the sampler's MLP, which the seed's scale leaves
            degenerate at short budgets (spatialsep_jax/contrastive.py).
Every variant of one backbone renders and reads the same noisy data (the data section does not
depend on the system tokens), so a baseline and its NASS run are paired example by example.
"""

import ml_collections

from spatialsep_jax.configs import base

SIZES = ("smoke", "gpu")
SYSTEMS = ("baseline", "nopcl")
ABLATIONS = ("lambda1", "m1", "n2s", "pclnorm")
# The seed's Libri2Mix-noisy / WHAM! conditions span about -6..+3 dB speech-to-noise.
SNR_DB_RANGE = (-6.0, 3.0)
MIC_SETS = {"mono": ("L_tmic",), "bi": ("L_tmic", "R_tmic")}


def parse(arg: str):
  size, system, ablations = "", "nass", []
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if token in SIZES:
      size = token
    elif token in SYSTEMS:
      system = token
    elif token in ABLATIONS:
      ablations.append(token)
    else:
      raise ValueError(f"unknown config token {token!r}; use any of "
                       f"{SIZES + SYSTEMS + ABLATIONS} separated by commas, e.g. ':smoke,baseline'")
  if ablations and system != "nass":
    raise ValueError(f"tokens {ablations} change the contrastive loss, which {system!r} has not")
  return size, system, ablations


def noisy_data(config, mics: str) -> None:
  data = config.data
  data.input_channels = MIC_SETS[mics]
  data.noise = "diffuse"
  data.snr_db_range = SNR_DB_RANGE
  if len(MIC_SETS[mics]) > 1:
    # The clean talkers and noise at every input mic: what PCL encodes through the
    # multichannel encoder (batch targets_<kind> [B, S, T, M], targets_noise [B, T, M]).
    data.target_mics = MIC_SETS[mics]


def nass_system(config, system: str, ablations, mics: str) -> None:
  """Model outputs, loss terms and evaluation task of `system` (see the module doc)."""
  multichannel = len(MIC_SETS[mics]) > 1
  pit = {"term": "pit_sisdr", "weight": 1.0, "clamp_db": 30.0}
  config.eval.metrics = ("sisdr", "sdr")
  if system == "baseline":
    config.model.extra_outputs = 0
    config.loss.terms = ml_collections.ConfigDict({"pit": pit})
    config.eval.task = "separation"
    return
  config.model.extra_outputs = 1
  config.eval.task = "noisy_separation"
  terms = {"pit": {**pit, "stems": ("noise",), "extra_outputs": "permute"}}
  if system == "nass":
    config.model.pcl_head = True
    config.model.pcl_clean_key = f"targets_{config.data.target}" if multichannel else "sources"
    config.model.pcl_noise_key = "targets_noise" if multichannel else "noise"
    config.model.pcl_embed_dim = 256
    terms["pcl"] = {"term": "pcl", "weight": 1.0 if "lambda1" in ablations else 2.0,
                    "num_positions": 256, "temperature": 0.07,
                    "num_negatives": 1 if "m1" in ablations else 0,
                    "direction": "n->s" if "n2s" in ablations else "s->n"}
    if "pclnorm" in ablations:
      # Only set with the token: the seed's configs (and their fingerprints) stay as they were.
      terms["pcl"]["input_norm"] = "standardize"
  config.loss.terms = ml_collections.ConfigDict(terms)


def nass_config(name: str, arg: str, *, mics: str, backbone: str = "sudormrf"):
  size, system, ablations = parse(arg)
  config = base.get_base_config(size)
  config.name = name + ("" if system == "nass" else f"_{system}") + "".join(
      f"_{token}" for token in ablations)
  noisy_data(config, mics)
  if backbone == "dual_path_transformer":
    dual_path_model(config, size)
  nass_system(config, system, ablations, mics)
  config.eval.oracles = ()
  config.eval.vocoder = False
  if size == "smoke":
    config.eval.metrics = ("sisdr",)
  return config


def dual_path_model(config, size: str) -> None:
  """A SepFormer-style dual-path transformer small enough to train here (see
  spatialsep_jax/models/dual_path.py for the seed's own size)."""
  model = config.model = ml_collections.ConfigDict()
  model.name = "dual_path_transformer"
  model.extra_outputs = 0
  model.dtype = "float32"
  model.enc_kernel = 16
  if size == "smoke":
    model.update(enc_basis=16, model_dim=16, num_blocks=1, layers_per_path=1, num_heads=2,
                 ff_dim=32, chunk_size=20)
  elif size == "gpu":
    model.update(enc_basis=128, model_dim=128, num_blocks=2, layers_per_path=2, num_heads=4,
                 ff_dim=256, chunk_size=100, dtype="bfloat16")
  else:
    model.update(enc_basis=64, model_dim=64, num_blocks=2, layers_per_path=1, num_heads=4,
                 ff_dim=128, chunk_size=50)
  config.optim.learning_rate = 1.5e-4 if size == "" else 5e-4
