"""Binaural enhancement with fusion layers (seed 004): two Conv-TasNet sides (left, right CI
T-mic) joined by Hadamard fusion layers; the target talker's direct-path image at each ear.

Usage: `python launch/train.py --config=configs/fusion.py[:tokens]`, tokens separated by commas:
  topology   independent (default) | front | back | double
  encoder    learned (default) | stft
  causal     causal TCN (cLN, left-padded convolutions); default non-causal (gLN)
  size       smoke | gpu; none = the CPU demo
  sisdr      per-ear SI-SDR loss instead of per-ear SNR
  ild        adds the interaural term (ILD + IPD error of the target, weight 0.1)
e.g. `configs/fusion.py:double,stft,gpu`; the run's name is fusion_<topology>_<encoder>[...].

Task: `data.num_sources = 1` (the target talker) in diffuse noise at 0-15 dB SNR in the study's
simulated rooms (test rooms unseen in training); input ("L_tmic", "R_tmic"); references
`targets_direct:0` [B, 2, T] at data.target_mics = ("L_tmic", "R_tmic"); loss per-ear negative
SNR (level-preserving, so ILD is kept), no PIT. Evaluation: the enhancement task (output k vs
ear k, baseline the mixture at each ear) with SNR / SI-SDR / STOI per ear and the binaural
metrics of `spatialsep_jax/binaural_metrics.py` (better-ear STOI, MBSTOI, interaural
coherence, delta ILD / ITD).

Sizes (seed 004 / SPEC section 5: N = 512, L = 64 at 16 kHz, B = 64, H = 256, S = 64, X = 2,
R = 2, P = 256):
  gpu      the seed's N, B, H, S, X, R with L = 32 (stride 16: the seed's 4-ms window at this
           project's 8 kHz) and P = 3 (Conv-TasNet's kernel; the SPEC's P = 256 makes the
           grouped-conv gradient the step's bottleneck on GPU), 4-s segments, batch 16;
  default  N = 128, H = 128, L = 32, 2-s segments, 200 steps: minutes on CPU;
  smoke    N = 16, B = 8, H = 16, S = 8, L = 16, R = 1: seconds.
"""

import ml_collections

from spatialsep_jax.configs import base

TOPOLOGIES = ("independent", "front", "back", "double")
ENCODERS = ("learned", "stft")
SIZES = ("smoke", "gpu")
FLAGS = ("causal", "sisdr", "ild")


def parse_arg(arg: str):
  """`arg` -> (size, topology, encoder, flags)."""
  size, topology, encoder, flags = "", "independent", "learned", []
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if token in SIZES:
      size = token
    elif token in TOPOLOGIES:
      topology = token
    elif token in ENCODERS:
      encoder = token
    elif token in FLAGS:
      flags.append(token)
    else:
      raise ValueError(f"unknown config token {token!r}; use any of "
                       f"{SIZES + TOPOLOGIES + ENCODERS + FLAGS} separated by commas, e.g. "
                       "':double,stft,smoke'")
  return size, topology, encoder, flags


def get_config(arg: str = ""):
  size, topology, encoder, flags = parse_arg(arg)
  config = base.get_base_config(size)
  config.name = "_".join(["fusion", topology, encoder] + flags)

  data = config.data
  data.num_sources = 1
  data.noise = "diffuse"
  data.snr_db_range = (0.0, 15.0)
  data.input_channels = ("L_tmic", "R_tmic")
  data.reference_mic = "L_tmic"
  data.target_mics = ("L_tmic", "R_tmic")
  data.target = "direct"

  model = config.model = ml_collections.ConfigDict()
  model.name = "fusion"
  model.topology = topology
  model.encoder = encoder
  model.num_basis = 512
  model.kernel = 32
  model.bottleneck = 64
  model.hidden = 256
  model.skip = 64
  model.dw_kernel = 3
  model.num_blocks = 2
  model.num_repeats = 2
  model.causal = "causal" in flags
  model.mask_activation = "softmax"
  model.decoder_activation = "tanh"
  model.dtype = "float32"

  targets = "targets_direct:0"
  loss = "sisdr" if "sisdr" in flags else "snr"
  config.loss.terms = ml_collections.ConfigDict({
      "ears": {"term": loss, "weight": 1.0, "targets": targets, "clamp_db": 0.0}})
  if "ild" in flags:
    config.loss.terms.interaural = {"term": "interaural", "weight": 0.1, "targets": targets,
                                    "cues": "ild_ipd", "n_fft": 256, "hop": 64}

  ev = config.eval
  ev.task = "enhancement"
  ev.targets = targets
  ev.baseline = "mixture"
  ev.oracles = ()
  ev.vocoder = False
  ev.metric_modules = ("spatialsep_jax.binaural_metrics",)
  ev.metrics = ("snr", "sisdr", "stoi", "better_ear_stoi", "mbstoi", "interaural_coherence",
                "delta_ild", "delta_itd")

  if size == "smoke":
    model.num_basis = 16
    model.kernel = 16
    model.bottleneck = 8
    model.hidden = 16
    model.skip = 8
    model.num_repeats = 1
  elif size == "gpu":
    train = config.train
    train.batch_size = 16
  else:
    model.num_basis = 128
    model.hidden = 128
  return config
