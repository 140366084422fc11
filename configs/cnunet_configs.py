"""The CNUNet ladder of seed 003 (causal speech enhancement at 16 kHz): shared builder.

One file per rung, each `get_config("[smoke|gpu][,mono|uni|bi]")`:
  configs/cnunet_real_sb.py     real-valued layers, one (mask) branch   (the NUNet-style rung)
  configs/cnunet_complex_sb.py  complex layers, one (mask) branch       (CNUNet-SB)
  configs/cnunet_tb.py          complex layers, mask + mapping branches (CNUNet-TB)
  configs/cnunet_tb_stage1.py   CNUNet-TB + teacher embeddings of the clean target fused after
                                encoder stage 6 (stage 1; the teacher reads the clean target,
                                so this is a training stage, not an inference model)
  configs/cnunet_tb_ts.py       CNUNet-TB trained to replicate stored stage-1 latents (stage 2,
                                CNUNet-TB-TS: causal and teacher-free at inference)

The seed's teacher (WavLM Large) cannot be downloaded here; the teacher is the substitute
named in `spatialsep_jax/teachers.py` (a speech encoder trained in this project on clean
speech alone). Task: one talker (`data.num_sources = 1`) in noise (`data.noise`), target its
direct-path image at the reference mic (`targets_direct:0`), scored by the enhancement task.

Sizes:
  gpu      the authors' widths (out_ch 64 = 32 real + 32 imaginary, mid_ch 32 = 16 + 16),
           STFT 512 / 256 at 16 kHz, depths 6, 5, 4, 4, 4, 3; 2-s segments (the authors' chunk);
  default  the same network at out 8 / mid 4 per part: minutes on CPU;
  smoke    8 kHz, STFT 64 / 32, one stage of depth 1, one dense layer, out 4 / mid 2 (the
           compile of the nested U-Net's gradient dominates on CPU: ~20-40 s).
Loss: 0.1 (MSE re + MSE im) + 0.9 MSE |.| on compressed spectra (`spectral_terms`); the
authors' AdamW (7.5e-4, decoupled weight decay 0.02: `optim.name = "adamw"`), StepLR x0.5 every
third of the run (theirs: every 30 of 80 epochs).
"""

import ml_collections

from spatialsep_jax.configs import base
from spatialsep_jax.configs import study_configs

RUNGS = ("real_sb", "complex_sb", "tb", "tb_stage1", "tb_ts")


def cnunet_config(rung: str, arg: str = ""):
  if rung not in RUNGS:
    raise ValueError(f"unknown CNUNet rung {rung!r}; one of {RUNGS}")
  size, mics, model_tokens = study_configs.parse_arg(arg, "mono")
  if model_tokens:
    raise ValueError(f"config tokens {model_tokens} are SuDoRM-RF options; the CNUNet configs "
                     "take a size (smoke, gpu) and a microphone set (mono, uni, bi)")
  import spatialsep_jax.models.cnunet  # noqa: F401  (registers "cnunet" and its loss terms)
  config = base.get_base_config(size)
  config.name = f"cnunet_{rung}" + ("" if mics == "mono" else f"_{mics}")

  data = config.data
  data.sample_rate = 16000
  data.segment_seconds = 2.0
  data.num_sources = 1
  data.noise = "diffuse"
  data.snr_db_range = (0.0, 15.0)
  data.input_channels = study_configs.MIC_SETS[mics]
  data.target = "direct"

  model = config.model = ml_collections.ConfigDict()
  model.name = "cnunet"
  model.complex_layers = rung != "real_sb"
  model.branches = "mask" if rung in ("real_sb", "complex_sb") else "both"
  model.n_fft = 512
  model.hop = 256
  model.compress_power = 0.2
  model.out_channels = 32           # per part; the real rung uses 2x (the same total width)
  model.mid_channels = 16
  model.depths = (6, 5, 4, 4, 4, 3)
  model.dense_layers = 6
  model.norm = "frame"              # frame | cumulative (both causal)
  model.attention_kernel = 17
  model.attention_window = 32
  model.reference_channel = 0
  model.teacher = ""

  targets = "targets_direct:0"
  config.loss.terms = ml_collections.ConfigDict({
      "spectral": {"term": "compressed_spectral", "weight": 1.0, "targets": targets,
                   "n_fft": model.get_ref("n_fft"), "hop": model.get_ref("hop"),
                   "power": model.get_ref("compress_power")}})

  optim = config.optim
  optim.name = "adamw"
  optim.weight_decay = 0.02
  optim.learning_rate = 7.5e-4
  optim.decay_factor = 0.5
  optim.flatten = True              # ~1,300 parameter tensors: one vector for the optimizer

  ev = config.eval
  ev.task = "enhancement"
  ev.targets = targets
  ev.baseline = "mixture_reference"
  ev.oracles = ()
  ev.vocoder = False
  ev.metric_modules = ("spatialsep_jax.quality_metrics",)
  # + "dnsmos" where speechmos and onnxruntime are installed (the `quality` extra)
  ev.metrics = ("sisdr", "stoi", "estoi", "pesq", "segsnr", "composite")
  # Stage 1 reads the clean target (its teacher's input): evaluation passes the registry's
  # train_inputs only with this opt-in, and marks rows and summary "oracle teacher input".
  ev.oracle_train_inputs = rung == "tb_stage1"

  if size == "smoke":
    ev.metrics = ("sisdr", "stoi", "segsnr")
    data.sample_rate = 8000
    data.segment_seconds = 1.0
    model.n_fft = 64
    model.hop = 32
    model.depths = (1,)             # one stage: the multi-stage wiring is tested on TINY models
    model.out_channels = 4
    model.mid_channels = 2
    model.dense_layers = 1
    model.attention_kernel = 5
    model.attention_window = 8
  elif size == "gpu":
    config.train.batch_size = 16
  else:
    model.out_channels = 8
    model.mid_channels = 4
  if not model.complex_layers:
    model.out_channels *= 2
    model.mid_channels *= 2

  if rung == "tb_stage1":
    model.teacher = "speech_encoder_substitute"
    model.teacher_path = ""         # default: the shipped substitute (teachers.py)
  if rung == "tb_ts":
    data.cnunet_latents = ""        # the latent file of a stage-1 run (launch/cnunet_latents.py)
    config.loss.terms.latent = {"term": "latent_replication", "weight": 0.05}
  return config
