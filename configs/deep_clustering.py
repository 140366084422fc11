"""Deep clustering baseline (seed 001): BLSTM embeddings of STFT bins, affinity loss, k-means.

Usage: `python launch/train.py --config=configs/deep_clustering.py[:smoke|:gpu][,mono|uni|bi]`.
The mono input (the left T-mic) is the default; a microphone set of several channels feeds
the log spectra of every channel, concatenated, and masks the reference (first) channel.

Sizes:
  default  2 BLSTM layers of 128 units per direction, D = 20, STFT 256 / hop 64 (32 / 8 ms at
           8 kHz, the oracle masks' STFT too), on the base config's CPU data (2-s mixtures);
  smoke    1 layer of 16 units, D = 8, STFT 128 / hop 32, a few steps;
  gpu      4 BLSTM layers of 300 units per direction, D = 20 (the deep clustering network of
           Isik et al., Interspeech 2016; Hershey et al. 2016 used 2 layers), 4-s mixtures,
           batch 16, float32.
The SuDoRM-RF fields of `configs/base.py` stay in config.model and are ignored by this model.
`config.loss.terms.dc.n_fft` / `.hop` are references to `config.model.n_fft` / `.hop`, so
`--config.model.hop=32` changes both.

Measured on the default CPU data (2026-12-01, shared 2-core machine, 64 test mixtures, SI-SDRi
in dB with 95% CIs; oracle masks on the same 256/64 STFT, direct-path targets):
  200 steps (the default)        -1.55 [-2.02, -1.08]   (best val at step 150)
  2,000 steps, best at step 500  -0.11 [-0.53, 0.32]
  oracle IBM / IRM                3.25 [3.06, 3.45] / 3.48 [3.30, 3.66]
The validation DC loss stays at 0.25-0.26, the value of embeddings that do not tell the
talkers apart (every pairwise cosine ~0.5), while the training loss falls to 0.21 and one fixed
batch is fitted to 0.004 in 300 steps: on 600 training mixtures the network memorises and
does not yet generalise; the CPU default shows the pipeline, not a trained baseline.
"""

import ml_collections

from spatialsep_jax.configs import base
from spatialsep_jax.configs import study_configs


def get_config(arg: str = ""):
  size, mics, model_tokens = study_configs.parse_arg(arg, "mono")
  if model_tokens:
    raise ValueError(f"config tokens {model_tokens} are SuDoRM-RF feature options; deep "
                     "clustering takes a size (smoke, gpu) and a microphone set")
  config = base.get_base_config(size)
  config.name = "deep_clustering" if mics == "mono" else f"deep_clustering_{mics}"
  config.data.input_channels = study_configs.MIC_SETS[mics]

  model = config.model
  model.name = "deep_clustering"
  model.n_fft = 256
  model.hop = 64
  model.spectral_feature = "log"       # log | compressed (|X|^0.3)
  model.input_spectra = "reference" if mics == "mono" else "all"
  model.reference_channel = 0          # index into data.input_channels: the masked channel
  model.embedding_net = "blstm"        # blstm | conv (dilated temporal convolutions)
  model.num_layers = 2
  model.hidden = 128                   # LSTM units per direction (conv: channels)
  model.embedding_dim = 20
  model.conv_kernel = 3
  model.kmeans_iters = 20
  model.activity_threshold_db = 40.0   # bins this far below the loudest are silent (loss
                                       # weights and k-means alike)
  model.dtype = "float32"

  if size == "smoke":
    model.n_fft = 128
    model.hop = 32
    model.num_layers = 1
    model.hidden = 16
    model.embedding_dim = 8
    model.kmeans_iters = 10
  elif size == "gpu":
    model.num_layers = 4
    model.hidden = 300
    model.embedding_dim = 20
    model.dtype = "float32"            # base's gpu variant sets bfloat16 for SuDoRM-RF

  config.loss.terms = ml_collections.ConfigDict({
      "dc": {"term": "dc_affinity", "weight": 1.0, "n_fft": model.get_ref("n_fft"),
             "hop": model.get_ref("hop"), "threshold_db": model.get_ref("activity_threshold_db")},
  })
  return config
