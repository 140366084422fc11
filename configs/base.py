"""Shared base configuration of every spatialsep-jax experiment.

Each study configuration (`configs/mono.py`, `configs/ild_ipd.py`, ...) calls
`base.get_base_config(variant)` and overrides the few fields that define it.
Variants (the part after `:` on the command line):

  ``""`` (default)  a CPU-sized demo on the embedded eSpeak corpus: 2-s mixtures, a reduced
                    SuDoRM-RF (128 basis, 4 blocks), 200 steps; minutes on 2 cores;
  ``smoke``         a few training steps on a tiny render, seconds on CPU (tests, CI);
  ``gpu``           the study's model at full size (512 basis, 16 blocks, 4-s mixtures),
                    batch 16, bfloat16 compute, 2,000 steps, fused norms, 3 of 16
                    blocks rematerialised: the accelerator run.

The channel layout of the head-worn cochlear-implant array is fixed by
`data_pipeline.array.CHANNEL_NAMES`: per ear a behind-the-ear front and back
microphone and a T-mic at the ear-canal entrance.
"""

import ml_collections


def get_base_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 42

  # ---------------------------------------------------------------- data
  data = config.data = ml_collections.ConfigDict()
  data.corpus = "espeak"              # "espeak" (embedded) or a folder of wav/flac
  data.corpus_layout = "auto"         # auto | librispeech | vctk | wsj0 | flat
  data.sample_rate = 8000
  data.segment_seconds = 4.0
  data.num_sources = 2
  data.array = "ci_bilateral"         # 6 channels, data_pipeline.array.CHANNEL_NAMES
  data.input_channels = ("L_tmic",)   # what the model sees, in this order
  data.reference_mic = "L_tmic"       # where training targets are taken
  data.target_mics = ()               # mics with stored targets (batch targets_* [B, S, T, M_t]);
                                      # () = (reference_mic,); e.g. ("L_tmic", "R_tmic") per ear
  data.target = "direct"              # direct (anechoic head-filtered) | reverberant
  data.scene = "simulated"            # simulated (pyroomacoustics) | measured
  data.measured_dir = ""              # BRIR folder or .sofa file when scene=measured
  data.room_size_min = (3.0, 3.0, 2.4)
  data.room_size_max = (10.0, 8.0, 4.0)
  data.rt60_range = (0.2, 0.8)
  data.azimuth_step_deg = 15.0        # talker azimuth grid over the full circle
  data.distance_range = (1.0, 2.0)
  data.tir_db_range = (-5.0, 5.0)     # target-to-interferer ratio
  data.min_crop_level_db = -15.0      # crops quieter than this relative to the utterance's
                                      # active level are never drawn (about 3% of the segment
                                      # at active level: 0.12 s of 4 s); -inf: any non-zero crop
  data.noise = "none"                 # none | diffuse | babble | nonstationary | mixed | a folder
                                      # of noise files (data_pipeline/noise.py); through the
                                      # scene's room and mics, record field noise_kind
  data.snr_db_range = (0.0, 15.0)     # talkers-to-noise RMS ratio at the reference mic
  # Used only by the noise kinds that need them (the dataset and run identities leave them out
  # otherwise, dataset.unused_data_fields):
  data.babble_talkers = 6             # babble: utterances summed, each from its own azimuth
  data.babble_speaker_fraction = 0.1  # babble, folder corpora: share of the speakers taken out
                                      # of training for the babble pools
  data.mixed_noise_kinds = ("diffuse", "babble", "nonstationary")  # mixed: drawn per example
  data.rir_length_seconds = 1.0       # as the study: BRIRs truncated/padded to 1 s
  data.num_rooms = 64                 # RIR bank: rooms x azimuths x distances
  data.room_split = (0.75, 0.125, 0.125)  # fractions of the bank's rooms per train/val/test
                                      # split (>= 1 room each): val/test rooms and their
                                      # source positions are never used in training
  data.share_rooms_across_splits = False  # True (ablation): every split draws from every room
  data.num_examples = ml_collections.ConfigDict(dict(train=8000, val=256, test=200))
  data.examples_per_shard = 500
  data.store_images = False           # per-talker multichannel images (dynamic mixing)
  data.shards_dir = ""                # default: ./data/<dataset hash>
  data.cache_dir = ""                 # corpus/RIR caches; default ./.cache
  data.loader = "auto"                # auto | tfdata | grain
  data.loader_workers = 0             # Grain worker processes (0 = threads in this process)
  data.host_audio_dtype = "float16"   # the shards' own float16 samples, unconverted (lossless,
                                      # half the bytes); the jitted step casts them on the
                                      # device. float32 converts on the host.
  data.dynamic_mixing = False
  data.prefetch = 2                   # host batches the loader prepares ahead
  data.device_prefetch = 2            # batches copied to the device ahead of the step
  data.espeak = ml_collections.ConfigDict(
      dict(num_speakers=40, utterances_per_speaker=12, split_speakers=(30, 5, 5),
           babble_speakers=(8, 4, 4)))  # babble voices per split, beside the 40 talkers
  data.speaker_split = (0.8, 0.1, 0.1)  # folder corpora: speaker-disjoint fractions

  # ---------------------------------------------------------------- model
  model = config.model = ml_collections.ConfigDict()
  model.name = "sudormrf"
  model.features = ()                 # subset of ("ipd", "ild")
  model.feature_pair = (0, 1)         # indices into data.input_channels
  model.fusion = "concat"             # concat | attention ("AF" variants)
  model.feature_norm = "joint"        # joint (the study: one norm over encoder + features) |
                                      # separate (the feature map normalised on its own first)
  # model.feature_init = "zero" is set by the `zeroinit` token only (configs/study_configs.py);
  # absent means the default path, so no other configuration's fingerprint changes.
  model.n_fft = 512
  model.ild_clip_db = 30.0
  model.enc_basis = 512
  model.enc_kernel = 21
  model.enc_stride = 10
  model.bottleneck = 128
  model.num_blocks = 16
  model.upsampling_depth = 4          # one stride-1 + three stride-2 depthwise convs
  model.dw_kernel = 5
  model.extra_outputs = 0             # e.g. 1 for a noise output (NASS)
  model.dtype = "float32"             # float32 | bfloat16 (params and loss stay float32)
  model.depthwise_impl = "slices"     # slices | xla | pallas
  model.norm_impl = "autodiff"        # autodiff | fused (one-pass statistics, hand-written VJP)
  model.uconv_impl = "xla"            # xla | pallas (each depthwise level, conv + GLN, one fused Pallas function)
  model.remat = "none"                # none | block | dots (recompute U-ConvBlocks in backward)
  model.remat_blocks = -1             # remat only the first N blocks (-1: all; N needs unrolled blocks)
  model.scan_blocks = False           # True: nn.scan over the blocks (stacked params, faster compile)

  # ---------------------------------------------------------------- loss
  # A weighted set of named terms (spatialsep_jax/loss_terms.py); each entry's key is its
  # label, `term` the registered function (default: the label), every other field a setting.
  loss = config.loss = ml_collections.ConfigDict()
  loss.terms = ml_collections.ConfigDict({
      # The study: permutation-invariant negative SI-SDR, clamped to [-30, 30] dB.
      "pit": {"term": "pit_sisdr", "weight": 1.0, "clamp_db": 30.0},
  })

  # ---------------------------------------------------------------- optimiser
  optim = config.optim = ml_collections.ConfigDict()
  optim.name = "adam"                 # adam | adamw (decoupled weight decay)
  optim.weight_decay = 0.0            # adamw only (the CNUNet seed: 0.02)
  optim.learning_rate = 1e-3
  optim.decay_every_steps = 0         # StepLR; 0 = derive from train.num_steps
  optim.decay_factor = 0.2
  optim.clip_norm = 5.0
  optim.flatten = False               # optimizer on one concatenated vector (optax.flatten)

  # ---------------------------------------------------------------- training
  train = config.train = ml_collections.ConfigDict()
  train.batch_size = 4
  # Initialisation and batch order (and dynamic mixing); 0 = config.seed. config.seed also fixes
  # the data (rooms, speakers, scenes): set train.seed to retrain on the same data with another
  # draw of the training randomness (several seeds for one finding).
  train.seed = 0
  train.num_steps = 2000
  train.log_every = 10
  train.eval_every = 250
  train.eval_batches = 10
  train.checkpoint_every = 250
  train.keep_best = 3
  train.early_stopping_patience = 0   # evaluations without improvement; 0 = off
  train.max_consecutive_nonfinite = 10
  train.schedule_steps = 0            # > 0: the decay rule's horizon instead of num_steps, so a
                                      # run can be extended without moving its LR boundaries

  # ---------------------------------------------------------------- evaluation
  ev = config.eval = ml_collections.ConfigDict()
  ev.split = "test"
  ev.task = "separation"              # separation (PIT-aligned) | enhancement (output k vs target k)
  ev.targets = "sources"              # enhancement: the batch key of the targets [B, K, T]
  ev.baseline = "mixture_reference"   # enhancement: the unprocessed signal of the improvements
  ev.oracles = ("ibm", "irm")         # oracle masks scored beside the model (upper bounds)
  ev.batch_size = 8
  ev.max_examples = 0                 # 0 = the whole split
  ev.metrics = ("sisdr", "sdr", "stoi", "pesq")
  ev.metric_modules = ()              # modules registering more metrics (metrics.register_metric)
  ev.after_training = True            # train.py evaluates the best checkpoint at the end
  ev.compare_pretrained = True        # ... and the shipped pretrained/<config name>, if one ships
  ev.vocoder = True
  ev.num_workers = 0                  # 0 = os.cpu_count()
  ev.save_examples = 4
  ev.save_estimates = False           # keep every scored estimate (<eval>/estimates/) to rescore

  if not variant:
    data.segment_seconds = 2.0
    data.num_rooms = 16
    data.num_examples = ml_collections.ConfigDict(dict(train=600, val=64, test=64))
    data.examples_per_shard = 100
    model.enc_basis = 128
    model.bottleneck = 64
    model.num_blocks = 4
    model.n_fft = 256
    train.num_steps = 200
    train.log_every = 10
    train.eval_every = 50
    train.eval_batches = 8
    train.checkpoint_every = 50
    ev.max_examples = 64
  elif variant == "smoke":
    data.num_examples = ml_collections.ConfigDict(dict(train=16, val=8, test=8))
    data.examples_per_shard = 8
    data.segment_seconds = 1.0
    data.num_rooms = 3                # one room per split
    data.rir_length_seconds = 0.25
    data.rt60_range = (0.2, 0.3)
    data.espeak.num_speakers = 12
    data.espeak.utterances_per_speaker = 2
    data.espeak.split_speakers = (6, 3, 3)
    data.espeak.babble_speakers = (3, 2, 2)
    model.enc_basis = 32
    model.bottleneck = 16
    model.num_blocks = 2
    model.upsampling_depth = 2          # half the levels per block: the tests compile less
    model.n_fft = 64
    train.batch_size = 4
    train.num_steps = 6
    train.log_every = 2
    train.eval_every = 3
    train.eval_batches = 1
    train.checkpoint_every = 3
    ev.batch_size = 4
    ev.save_examples = 1
    ev.metrics = ("sisdr", "stoi")
    ev.num_workers = 1
    ev.compare_pretrained = False
  elif variant == "gpu":
    data.num_rooms = 48
    train.eval_batches = 16
    train.batch_size = 16
    train.num_steps = 2000
    train.eval_every = 250
    train.checkpoint_every = 250
    model.dtype = "bfloat16"
    # Same function as the study's unrolled autodiff model (tests/test_models.py). On the
    # H100 the IPD+ILD step runs at 218.7 samples/s, 11.3 GiB peak, 64 s to compile
    # (benchmarks/h100/results.md): remat=block for 3 of the 16 blocks keeps the peak under
    # 12 GiB at 5% of the speed of keeping every activation (230.1/s, 13.6 GiB). For a
    # 6-s compile at 3.7 GiB and 179/s: scan_blocks=True, remat=dots, remat_blocks=-1.
    # The study's runs in reports/study_h100 used norm_impl=autodiff, remat=none.
    model.norm_impl = "fused"
    model.remat = "block"
    model.remat_blocks = 3
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; use one of '', 'smoke', 'gpu'")
  return config
