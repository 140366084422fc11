"""Throughput benchmarks (never timed tests): rendering, input pipelines, the training step.

  python launch/benchmark.py --what=render,loader --config=configs/mono.py \
      --config.data.num_rooms=4 --workdir=benchmarks/cpu
  python launch/benchmark.py --what=step --step_configs=mono,ild_ipd --batch_sizes=16 \
      --config=configs/ild_ipd.py:gpu --workdir=benchmarks/h100

Each measurement is one JSON line in <workdir>/results.jsonl (with device, versions and the
command) and a row of <workdir>/results.md.
"""

import json
import os
import platform
import sys
import time

from spatialsep_jax.launch import common
from absl import app, flags

_CONFIG = common.define_config_flags()
flags.DEFINE_list("what", ["render", "loader"],
                 "render, loader, step, latency, evaluation, norm_cost, step_cost, uconv_kernels")
flags.DEFINE_integer("num_examples", 64, "examples timed for the render and evaluation benchmarks")
flags.DEFINE_integer("loader_examples", 512, "examples in the shards the loaders read")
flags.DEFINE_integer("loader_batches", 40, "batches timed per loader backend")
flags.DEFINE_list("loader_settings", ["float32:0", "float16:0", "float16:2"],
                  "host_audio_dtype:loader_workers pairs timed for each backend")
flags.DEFINE_list("step_configs", ["mono", "ild_ipd"], "configuration files for the step timing")
flags.DEFINE_list("batch_sizes", ["16"], "batch sizes for the step timing ('config': the "
                  "config's train.batch_size, i.e. the trainer's program)")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "override model.dtype (step, latency)")
flags.DEFINE_integer("steps", 20, "timed steps after compilation: step reports the median over "
                     "windows of 5 back-to-back steps (and of single waited-for steps)")
flags.DEFINE_multi_string("model_set", [""], "step: model.* overrides timed as one variant, e.g. "
                          "'norm_impl=fused,scan_blocks=True' (repeat the flag; '' = as configured)")
flags.DEFINE_string("profile_dir", None, "step: write a jax.profiler trace of 3 timed steps "
                    "per variant under this folder (summarise with launch/profile_summary.py)")
flags.DEFINE_bool("hlo_bytes", False, "step: also count the bytes the optimised HLO's kernels "
                  "read and write per step (operands + results of every fusion, custom call and "
                  "copy, as launch/profile_summary.py --hlo; a scanned body counted once) and "
                  "measure this device's copy bandwidth, to give the bandwidth the step implies")
flags.DEFINE_list("uconv_cases", ["1:16x128x4", "2:32x128x4"],
                  "uconv_kernels: stride:ROWSxCHANNELSxWARPS Pallas tile configurations timed")
flags.DEFINE_list("uconv_shape", ["16", "3200", "1026"], "uconv_kernels: B,L,C of the level "
                  "input (1026 = the IPD+ILD blocks' channels; 1024 tells what row alignment costs)")
flags.DEFINE_bool("uconv_conv_alone", True, "uconv_kernels: also time the plain depthwise "
                  "conv's backward (Pallas and XLA)")
flags.DEFINE_integer("e2e_steps", 0, "step: also time this many steps fed by the real loader "
                     "from rendered shards (rendered first when missing), against the step-only rate")
FLAGS = flags.FLAGS


def _environment() -> dict:
  import jax
  device = jax.devices()[0]
  return {"device": getattr(device, "device_kind", str(device)), "num_devices": jax.device_count(),
          "jax": jax.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}


PIPELINED_WINDOW = 5


def _progress(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _record(workdir: str, row: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  row = {**row, **_environment(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
  with open(os.path.join(workdir, "results.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
  print(json.dumps(row))


def bench_render(config, workdir: str) -> None:
  """Mixtures per second per core with a warm RIR bank (one process)."""
  from data_pipeline import dataset
  config_json = config.to_json()
  dataset._scene_inputs(config_json)  # corpus synthesis + bank build/load, not timed
  dataset._make_example(config_json, "train", 0)
  start = time.perf_counter()
  for index in range(1, FLAGS.num_examples + 1):
    dataset._make_example(config_json, "train", index)
  elapsed = time.perf_counter() - start
  _record(workdir, {"benchmark": "render", "examples": FLAGS.num_examples,
                    "segment_s": config.data.segment_seconds, "rate": config.data.sample_rate,
                    "noise": config.data.noise,
                    "mixtures_per_s_per_core": FLAGS.num_examples / elapsed})


def bench_loader(config, workdir: str) -> None:
  """Batched examples per second from local shards, both backends, all six channels."""
  from data_pipeline import dataset, loader
  config = config.copy_and_resolve_references()
  config.data.num_examples.train = FLAGS.loader_examples
  config.data.input_channels = ("L_front", "L_back", "L_tmic", "R_front", "R_back", "R_tmic")
  config.data.shards_dir = os.path.join(".cache", "benchmark_shards")
  dataset.render(config, config.data.shards_dir, progress=True)
  backends = ["grain"]
  if loader.resolve_backend("auto") == "tfdata":
    backends.append("tfdata")
  for backend in backends:
    for setting in FLAGS.loader_settings:
      dtype, workers = setting.split(":")
      if backend == "tfdata" and int(workers):
        continue  # worker processes are a Grain option
      config.data.loader, config.data.host_audio_dtype = backend, dtype
      config.data.loader_workers = int(workers)
      iterator = iter(loader.make_loader(config, config.data.shards_dir, "train", train=True,
                                         batch_size=config.train.batch_size))
      for _ in range(3):
        next(iterator)
      start = time.perf_counter()
      for _ in range(FLAGS.loader_batches):
        next(iterator)
      elapsed = time.perf_counter() - start
      _record(workdir, {"benchmark": "loader", "backend": backend, "host_audio_dtype": dtype,
                        "workers": int(workers), "batch_size": config.train.batch_size,
                        "channels": 6, "segment_s": config.data.segment_seconds,
                        "examples_per_s": FLAGS.loader_batches * config.train.batch_size / elapsed})


def _model_overrides(text: str) -> dict:
  import ast
  overrides = {}
  for item in filter(None, text.split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      common.fail(f"--model_set item {item!r} is not key=value; e.g. --model_set=norm_impl=fused")
    try:
      overrides[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key.strip()] = value
  return overrides


def _time_end_to_end(config, programs, state, num_steps: int) -> float:
  """Samples/s of `num_steps` training steps fed by the configured loader (after 3 warm-up
  steps), blocking only at the end as the trainer does."""
  import jax
  from data_pipeline import dataset, loader as loader_lib
  from spatialsep_jax import train
  shards_dir = dataset.ensure_dataset(config)
  batches = train.device_batches(
      loader_lib.make_loader(config, shards_dir, "train", train=True,
                             batch_size=config.train.batch_size),
      programs.mesh, int(config.data.device_prefetch))
  for _ in range(3):
    state, metrics = programs.train_step(state, next(batches))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = programs.train_step(state, next(batches))
  jax.block_until_ready(metrics)
  return num_steps * config.train.batch_size / (time.perf_counter() - start)


def _step_variants(base_arg: str):
  """(config name, model_set, batch size, config) for every --step_configs x --model_set x
  --batch_sizes combination."""
  for name in FLAGS.step_configs:
    for model_set in FLAGS.model_set:
      overrides = _model_overrides(model_set)
      for size in FLAGS.batch_sizes:
        config = common.load_named_config(name, base_arg, common.command_line_overrides())
        batch_size = config.train.batch_size if size == "config" else int(size)
        if FLAGS.dtype:  # models without a dtype field (CNUNet) compute in float32
          config.model.dtype = FLAGS.dtype
        for key, value in overrides.items():
          if key not in config.model:
            common.fail(f"--model_set names model.{key}, which the config does not have")
          config.model[key] = value
        config.train.batch_size = batch_size
        yield name, model_set, batch_size, config


def _batch_spec(config, programs, batch_size: int) -> dict:
  """The trainer's batch as shapes and dtypes (`train.synthetic_batch_spec`): synthetic batches
  of it make the benchmark compile the trainer's very program, so a warm compilation cache
  serves both (and CNUNet stage 2's step compiles before any latents exist)."""
  from spatialsep_jax import train
  try:
    return train.synthetic_batch_spec(config, programs, batch_size)
  except ValueError as e:
    common.fail(str(e))


def bench_step_cost(base_arg: str, workdir: str) -> None:
  """Bytes and FLOPs of one compiled training step by XLA's cost model on this backend (no
  step runs), with the StableHLO op count and the lowering and compile seconds (compile
  time follows the program's size: `--config.optim.flatten` shrinks a many-tensor model's).
  Use unrolled blocks: the cost model counts a scanned loop's body once."""
  import jax
  from spatialsep_jax import train
  for name, model_set, batch_size, config in _step_variants(base_arg):
    programs = train.build_programs(config)
    state = jax.eval_shape(programs.init, jax.random.key(0))
    batch = _batch_spec(config, programs, batch_size)
    start = time.perf_counter()
    lowered = programs.train_step.lower(state, batch)
    lower_s = time.perf_counter() - start
    ops = sum(1 for line in lowered.as_text().splitlines()
              if "=" in line and "stablehlo." in line)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    _record(workdir, {"benchmark": "step_cost", "config": name, "variant": base_arg,
                      "batch_size": batch_size, "dtype": config.model.get("dtype", "float32"),
                      "model_overrides": model_set,
                      "scan_blocks": bool(config.model.get("scan_blocks", False)),
                      "optim_flatten": bool(config.optim.get("flatten", False)),
                      "stablehlo_ops": ops, "lower_s": lower_s, "compile_s": compile_s,
                      "bytes_accessed_gb": float(cost.get("bytes accessed", float("nan"))) / 1e9,
                      "gflops": float(cost.get("flops", float("nan"))) / 1e9,
                      # XLA's buffer assignment on this backend: what one step holds at once
                      # (a GPU's fusion differs, so read it as an estimate there).
                      "temp_gib": _gib(memory, "temp_size_in_bytes"),
                      "argument_gib": _gib(memory, "argument_size_in_bytes"),
                      "output_gib": _gib(memory, "output_size_in_bytes")})


def _gib(memory, field: str) -> float:
  return getattr(memory, field, float("nan")) / 2**30 if memory is not None else float("nan")


def _hlo_bytes(lower) -> tuple[float, str]:
  """(bytes of operands and results of the kernels of the step's optimised HLO, where the
  text came from): the train-step module XLA dumped (XLA_FLAGS --xla_dump_to, as the
  device_bench variants stage sets) if there is one, else `lower().compile()` again."""
  import glob
  import re
  import tempfile
  import profile_summary
  dump = re.search(r"--xla_dump_to=(\S+)", os.environ.get("XLA_FLAGS", ""))
  found = glob.glob(os.path.join(dump.group(1), "*train_step*after_optimizations.txt")) if dump else []
  if found:
    sizes, _ = profile_summary.hlo_operand_bytes(max(found, key=os.path.getsize))
    return float(sum(sizes.values())), "xla dump"
  with tempfile.NamedTemporaryFile("w", suffix="after_optimizations.txt", delete=False) as f:
    f.write(lower().compile().as_text())
  try:
    sizes, _ = profile_summary.hlo_operand_bytes(f.name)
  finally:
    os.remove(f.name)
  return float(sum(sizes.values())), "compiled again"


def _copy_bandwidth(gib: float = 2.0) -> float:
  """Device-to-device copy rate, bytes read + written per second (median of 10 copies)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
  copy = jax.jit(lambda a: a + 1)  # one elementwise pass: read and write every byte
  jax.block_until_ready(copy(x))
  times = []
  for _ in range(10):
    start = time.perf_counter()
    jax.block_until_ready(copy(x))
    times.append(time.perf_counter() - start)
  return 2 * x.nbytes / float(np.median(times))


def bench_step(base_arg: str, workdir: str) -> None:
  """Median jitted training-step time per configuration, model variant and batch size
  (synthetic batch), optionally against the same step fed by the real input pipeline."""
  import jax
  import numpy as np
  from spatialsep_jax import models, train
  for name, model_set, batch_size, config in _step_variants(base_arg):
    programs = train.build_programs(config)
    state = programs.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    host_batch = {key: rng.normal(size=spec.shape).astype(spec.dtype)
                  for key, spec in _batch_spec(config, programs, batch_size).items()}
    batch = (programs.inputs(host_batch) if hasattr(programs, "inputs")
             else train.step_inputs(host_batch, programs.mesh))
    start = time.perf_counter()
    state, metrics = programs.train_step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    _progress(f"{name} [{model_set or 'as configured'}] batch {batch_size}: compiled and "
              f"first step in {compile_s:.1f} s")
    times = []
    for _ in range(FLAGS.steps):
      start = time.perf_counter()
      state, metrics = programs.train_step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    synced_step_s = float(np.median(times))
    # Training blocks only now and then, so the host queues step k+1 while the device runs
    # step k; a block after every step adds the launch of the next step's thousands of kernels.
    # The rate reported is the pipelined one: median over windows of back-to-back steps.
    windows = []
    for _ in range(max(1, FLAGS.steps // PIPELINED_WINDOW)):
      start = time.perf_counter()
      for _ in range(PIPELINED_WINDOW):
        state, metrics = programs.train_step(state, batch)
      jax.block_until_ready(metrics)
      windows.append((time.perf_counter() - start) / PIPELINED_WINDOW)
    step_s = float(np.median(windows))
    peak_gib = train.peak_device_memory_gib()
    if FLAGS.profile_dir:
      tag = "_".join(filter(None, [name, model_set.replace(",", "_").replace("=", "-")]))
      with jax.profiler.trace(os.path.join(FLAGS.profile_dir, tag)):
        for _ in range(3):
          state, metrics = programs.train_step(state, batch)
        jax.block_until_ready(metrics)
    row = {
        "benchmark": "step", "config": name, "variant": base_arg, "batch_size": batch_size,
        "dtype": config.model.get("dtype", "float32"), "depthwise_impl": config.model.get("depthwise_impl"),
        "model_overrides": model_set,
        "params": models.count_params(jax.device_get(state.params)),
        "step_ms": 1e3 * step_s, "samples_per_s": batch_size / step_s,
        "synced_step_ms": 1e3 * synced_step_s,
        "audio_s_per_s": batch_size * config.data.segment_seconds / step_s,
        "compile_and_first_step_s": compile_s,
        "peak_memory_gib": float("nan") if peak_gib is None else peak_gib}
    _progress(f"{name}: step {1e3 * step_s:.1f} ms back to back, {1e3 * synced_step_s:.1f} ms "
              f"when each step is waited for, peak {row['peak_memory_gib']:.2f} GiB")
    if FLAGS.hlo_bytes:
      start = time.perf_counter()
      moved, source = _hlo_bytes(lambda: programs.train_step.lower(state, batch))
      copy_rate = _copy_bandwidth()
      row.update(hlo_bytes_gb=moved / 1e9, hlo_source=source, hlo_bytes_tb_per_s=moved / step_s / 1e12,
                 copy_tb_per_s=copy_rate / 1e12,
                 fraction_of_copy_bandwidth=moved / step_s / copy_rate)
      _progress(f"{name}: {moved / 1e9:.1f} GB of kernel operands and results per step = "
                f"{moved / step_s / 1e12:.2f} TB/s, {100 * moved / step_s / copy_rate:.0f}% of "
                f"the {copy_rate / 1e12:.2f} TB/s copy rate (HLO re-read in "
                f"{time.perf_counter() - start:.0f} s)")
    if FLAGS.e2e_steps:
      _progress(f"{name}: {FLAGS.e2e_steps} steps fed by the {config.data.loader} loader")
      rate = _time_end_to_end(config, programs, state, FLAGS.e2e_steps)
      row.update(e2e_samples_per_s=rate, e2e_fraction_of_step=rate / row["samples_per_s"],
                 loader=config.data.loader, host_audio_dtype=config.data.host_audio_dtype)
    _record(workdir, row)
    del programs, state, batch
    jax.clear_caches()


def bench_latency(base_arg: str, workdir: str) -> None:
  """Forward-pass latency of one mixture (batch 1), per second of audio, per configuration."""
  import jax
  import numpy as np
  from spatialsep_jax import evaluation, train
  for name in FLAGS.step_configs:
    config = common.load_named_config(name, base_arg, common.command_line_overrides())
    config.model.dtype = FLAGS.dtype or config.model.dtype
    programs = train.build_programs(config)
    params = programs.init(jax.random.key(0)).params
    separate = evaluation.make_separate_fn(config, programs.model)
    mixture = np.random.default_rng(0).normal(
        size=train.example_input_shape(config)).astype(np.float32)
    start = time.perf_counter()
    jax.block_until_ready(separate(params, mixture))
    _progress(f"{name}: forward compiled in {time.perf_counter() - start:.1f} s")
    times = []
    for _ in range(FLAGS.steps):
      start = time.perf_counter()
      jax.block_until_ready(separate(params, mixture))
      times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    _record(workdir, {"benchmark": "latency", "config": config.name, "variant": base_arg,
                      "dtype": config.model.dtype, "segment_s": config.data.segment_seconds,
                      "ms_per_audio_s": 1e3 * seconds / config.data.segment_seconds})


def bench_evaluation(workdir: str) -> None:
  """CPU metric throughput of the test evaluation: every metric (SI-SDR, BSS-eval SDR, STOI,
  PESQ) on estimates and mixture, and again after the CI vocoder, for 4-s two-talker
  mixtures at 8 kHz in a pool of one worker per core (the model's forward pass excluded)."""
  import numpy as np
  from spatialsep_jax import metrics
  rng = np.random.default_rng(0)
  examples = []
  for _ in range(FLAGS.num_examples):
    references = rng.normal(size=(2, 32000))
    examples.append((references[::-1] + 0.3 * rng.normal(size=(2, 32000)), references,
                     references.sum(axis=0)))
  start = time.perf_counter()
  metrics.evaluate_many(examples, 8000, ("sisdr", "sdr", "stoi", "pesq"), num_workers=0,
                        progress=True, vocoder_config={})
  elapsed = time.perf_counter() - start
  _record(workdir, {"benchmark": "evaluation", "num_examples": len(examples),
                    "mixtures_per_s": len(examples) / elapsed})


def bench_norm_cost(workdir: str) -> None:
  """Bytes that XLA's cost model says one global layer norm's forward + backward moves on
  this backend, per `model.norm_impl`, at a U-ConvBlock's activation size ([16, 3200, 512],
  bfloat16). The compiled program's fusion decisions are the backend's own, so the figure
  on a GPU host speaks for the GPU; no kernel runs."""
  import jax
  import jax.numpy as jnp
  from spatialsep_jax.models import layers
  x = jax.ShapeDtypeStruct((16, 3200, 512), jnp.bfloat16)
  for impl in layers.NORM_IMPLS:
    norm = layers.GlobalLayerNorm(impl=impl, dtype=jnp.bfloat16)
    params = jax.eval_shape(norm.init, jax.random.key(0), x)["params"]

    def loss(p, inputs, weights):
      return jnp.sum((norm.apply({"params": p}, inputs) * weights).astype(jnp.float32))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    _record(workdir, {"benchmark": "norm_cost", "norm_impl": impl, "shape": [16, 3200, 512],
                      "dtype": "bfloat16",
                      "bytes_accessed_mb": float(cost.get("bytes accessed", float("nan"))) / 1e6,
                      "tensor_mb": 16 * 3200 * 512 * 2 / 1e6})


def _median_ms(fn, *args, repeats: int = 20) -> float:
  import jax
  import numpy as np
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def _uconv_cases(cases) -> dict[int, list[tuple[int, int, int]]]:
  """'stride:ROWSxCHANNELSxWARPS' items -> {stride: [(rows, channels, warps), ...]}."""
  by_stride = {}
  for case in cases:
    stride, _, tile = case.partition(":")
    rows, channels, warps = (int(v) for v in tile.split("x"))
    by_stride.setdefault(int(stride), []).append((rows, channels, warps))
  return by_stride


def bench_uconv_kernels(workdir: str, shape=None, cases=None) -> None:
  """The Pallas U-ConvBlock level (`pallas_uconv.depthwise_norm`, conv + GLN) and plain
  depthwise conv against the XLA path at the IPD+ILD model's level shapes ([16, 3200, 1026]
  bfloat16 input, stride 1 and 2): relative L2 errors of the output and every gradient
  against the float32 XLA result (the XLA bfloat16 path's own errors beside them), and the
  forward + backward time of each (median of 20 waited-for calls), per tile shape and
  warps per program (--uconv_cases)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from spatialsep_jax.models import layers, pallas_uconv
  batch, length, channels = shape or tuple(int(v) for v in FLAGS.uconv_shape)
  rng = np.random.default_rng(0)

  def xla_level(x, kernel, bias, scale, norm_bias, stride):
    conv = layers.depthwise_conv1d(x, kernel, stride, "slices") + bias.astype(x.dtype)
    return layers.fused_global_layer_norm(conv, scale, norm_bias, layers.GLN_EPS, x.dtype)

  def relative(got, want):
    got, want = got.astype(jnp.float32), want.astype(jnp.float32)
    return float(jnp.linalg.norm((got - want).ravel()) / jnp.linalg.norm(want.ravel()))

  defaults = (pallas_uconv.TILE_ROWS, pallas_uconv.TILE_CHANNELS, pallas_uconv.NUM_WARPS)
  for stride, tiles in _uconv_cases(cases or FLAGS.uconv_cases).items():
    x = jnp.asarray(rng.standard_normal((batch, length, channels)), jnp.float32)
    params = [jnp.asarray(rng.uniform(-0.45, 0.45, shape), jnp.float32)
              for shape in ((5, channels), (channels,))]
    params += [jnp.asarray(1 + 0.1 * rng.standard_normal(channels), jnp.float32),
               jnp.asarray(0.1 * rng.standard_normal(channels), jnp.float32)]
    weights = jnp.asarray(rng.standard_normal((batch, (length - 1) // stride + 1, channels)),
                          jnp.bfloat16)

    def value_and_grads(level):
      def run(x_, *p):
        out, vjp = jax.vjp(level, x_, *p)
        return (out,) + vjp(weights.astype(out.dtype))
      return jax.jit(run)

    xla_fn = value_and_grads(lambda *a: xla_level(*a, stride))
    pallas_fn = value_and_grads(lambda *a: pallas_uconv.depthwise_norm(*a, stride, layers.GLN_EPS))
    truth = xla_fn(x, *params)
    x16 = x.astype(jnp.bfloat16)
    names = ("output", "dx", "d_kernel", "d_bias", "d_scale", "d_norm_bias")
    xla_errors = dict(zip(names, map(relative, xla_fn(x16, *params), truth)))
    xla_ms = _median_ms(xla_fn, x16, *params)
    xla_fwd_ms = _median_ms(jax.jit(lambda *a: xla_level(*a, stride)), x16, *params)
    conv_xla = jax.jit(lambda x_, k_: jax.vjp(
        lambda a, b: layers.depthwise_conv1d(a, b, stride, "slices"), x_, k_)[1](weights))
    kernel16 = params[0].astype(jnp.bfloat16)
    conv_xla_ms = _median_ms(conv_xla, x16, kernel16) if FLAGS.uconv_conv_alone else None
    for tile_rows, tile_channels, warps in tiles:
      pallas_uconv.TILE_ROWS, pallas_uconv.TILE_CHANNELS = tile_rows, tile_channels
      pallas_uconv.NUM_WARPS = warps
      pallas_fn = value_and_grads(
          lambda *a: pallas_uconv.depthwise_norm(*a, stride, layers.GLN_EPS))
      errors = dict(zip(names, map(relative, pallas_fn(x16, *params), truth)))
      conv_pallas = jax.jit(lambda x_, k_: jax.vjp(
          lambda a, b: pallas_uconv.depthwise_conv(a, b, stride), x_, k_)[1](weights))
      conv_errors, conv_ms = None, None
      if FLAGS.uconv_conv_alone:
        conv_errors = [relative(g, w) for g, w in zip(conv_pallas(x16, kernel16),
                                                       conv_xla(x16, kernel16))]
        conv_ms = {"xla": conv_xla_ms, "pallas": _median_ms(conv_pallas, x16, kernel16)}
      row = {"benchmark": "uconv_kernels", "shape": [batch, length, channels], "stride": stride,
             "dtype": "bfloat16", "tile_rows": tile_rows, "tile_channels": tile_channels,
             "num_warps": warps,
             "code": pallas_uconv.KERNEL_VERSION,
             "pallas_errors": errors, "xla_errors": xla_errors,
             "conv_grad_errors_vs_xla_bf16": conv_errors,
             "level_fwd_bwd_ms": {"xla": xla_ms, "pallas": _median_ms(pallas_fn, x16, *params)},
             "level_fwd_ms": {"xla": xla_fwd_ms, "pallas": _median_ms(jax.jit(
                 lambda *a: pallas_uconv.depthwise_norm(*a, stride, layers.GLN_EPS)), x16, *params)},
             "conv_bwd_ms": conv_ms}
      _record(workdir, row)
  pallas_uconv.TILE_ROWS, pallas_uconv.TILE_CHANNELS, pallas_uconv.NUM_WARPS = defaults


def write_markdown(workdir: str) -> str:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "results.jsonl"))]
  lines = ["| benchmark | what | figure | device | command |", "| --- | --- | --- | --- | --- |"]
  for r in rows:
    overrides = f", {r['model_overrides']}" if r.get("model_overrides") else ""
    if r["benchmark"] == "render":
      what, figure = f"{r['segment_s']} s at {r['rate']} Hz, noise={r['noise']}", \
          f"{r['mixtures_per_s_per_core']:.1f} mixtures/s per core"
    elif r["benchmark"] == "loader":
      what, figure = (f"{r['backend']}, {r.get('host_audio_dtype', 'float32')} to host, "
                      f"{r.get('workers', 0)} worker processes, batch {r['batch_size']}, "
                      f"{r['channels']} ch"), \
          f"{r['examples_per_s']:.0f} examples/s"
    elif r["benchmark"] == "torch_step":
      what = (f"PyTorch {r['mode']} ({r['implementation']}), {r['dtype']}, "
              f"{r['input_channels']} ch, batch {r['batch_size']}")
      figure = (r.get("error") or f"{r['samples_per_s']:.1f} samples/s, {r['step_ms']:.1f} ms/step, "
                f"first step {r['compile_and_first_step_s']:.0f} s, peak "
                f"{r['peak_memory_gib']:.1f} GiB")
      r.setdefault("jax", f"torch {r['torch']}")
    elif r["benchmark"] == "evaluation":
      what = (f"test metrics + vocoded metrics, {r['num_examples']} 4-s two-talker mixtures, "
              "one worker per core")
      figure = f"{r['mixtures_per_s']:.2f} mixtures/s"
    elif r["benchmark"] == "latency":
      what = f"{r['config']} ({r['dtype']}), one {r['segment_s']} s mixture"
      figure = f"{r['ms_per_audio_s']:.2f} ms per second of audio"
    elif r["benchmark"] == "norm_cost":
      what = (f"global layer norm forward + backward, norm_impl={r['norm_impl']}, "
              f"{r['shape']} {r['dtype']} (XLA cost model, compiled only)")
      figure = (f"{r['bytes_accessed_mb']:.0f} MB accessed = "
                f"{r['bytes_accessed_mb'] / r['tensor_mb']:.1f} activation-sized tensors")
    elif r["benchmark"] == "step_cost":
      what = (f"{r['config']} training step ({r['dtype']}{overrides}), batch {r['batch_size']} "
              "(XLA cost model, compiled only)")
      figure = (f"{r['bytes_accessed_gb']:.1f} GB accessed, {r['gflops']:.0f} GFLOP, "
                f"{r.get('temp_gib', float('nan')):.1f} GiB temporaries")
    elif r["benchmark"] == "uconv_kernels":
      what = (f"U-ConvBlock level conv + GLN fwd + bwd, {r['shape']} {r['dtype']}, stride "
              f"{r['stride']}, Pallas tiles {r['tile_rows']} x {r['tile_channels']}, "
              f"{r.get('num_warps', 4)} warps" + (f" ({r['code']})" if r.get("code") else ""))
      worst = max(r["pallas_errors"].values())
      conv = r.get("conv_bwd_ms")
      figure = (f"XLA {r['level_fwd_bwd_ms']['xla']:.2f} ms, Pallas "
                f"{r['level_fwd_bwd_ms']['pallas']:.2f} ms; "
                + (f"forward alone XLA {r['level_fwd_ms']['xla']:.2f}, Pallas "
                   f"{r['level_fwd_ms']['pallas']:.2f} ms; " if "level_fwd_ms" in r else "")
                + (f"conv backward alone XLA {conv['xla']:.2f}, Pallas {conv['pallas']:.2f} ms; "
                   if conv else "")
                + f"largest relative error vs float32: Pallas {worst:.1e}, XLA bf16 "
                f"{max(r['xla_errors'].values()):.1e}")
    elif r["benchmark"] == "accuracy":
      what = f"{r['config']} ({r['dtype']}) trained {r['steps']} steps, batch {r['batch_size']}"
      figure = f"best val SI-SDRi {r['val_sisdri']:.2f} dB ({r['val_examples']} val mixtures)"
    else:
      devices = f" on {r['num_devices']} devices" if r.get("num_devices", 1) > 1 else ""
      what = (f"{r['config']} ({r['dtype']}, {r['depthwise_impl']}{overrides}), "
              f"batch {r['batch_size']}{devices}")
      # Rows before synced_step_ms existed timed waited-for steps only.
      timing = (f"{r['step_ms']:.1f} ms/step back to back ({r['synced_step_ms']:.1f} waited "
                "for)" if "synced_step_ms" in r else f"{r['step_ms']:.1f} ms/step waited for")
      figure = (f"{r['samples_per_s']:.1f} samples/s, {timing}, compile "
                f"{r['compile_and_first_step_s']:.0f} s, peak {r['peak_memory_gib']:.1f} GiB")
      if "hlo_bytes_gb" in r:
        figure += (f"; {r['hlo_bytes_gb']:.1f} GB of kernel operands + results per step = "
                   f"{r['hlo_bytes_tb_per_s']:.2f} TB/s, {100 * r['fraction_of_copy_bandwidth']:.0f}% "
                   f"of the measured {r['copy_tb_per_s']:.2f} TB/s copy rate")
      if "e2e_samples_per_s" in r:
        figure += (f"; with the {r['loader']} loader ({r['host_audio_dtype']} to host) "
                   f"{r['e2e_samples_per_s']:.1f} samples/s = {100 * r['e2e_fraction_of_step']:.0f}%")
    lines.append(f"| {r['benchmark']} | {what} | {figure} | {r['device']} ({r['cpus']} cpus), "
                 f"jax {r['jax']} | `{r['command']}` |")
  path = os.path.join(workdir, "results.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def main(argv):
  del argv
  common.setup_logging()
  config = _CONFIG.value
  workdir = FLAGS.workdir or os.path.join("benchmarks", "local")
  known = ("render", "loader", "step", "latency", "evaluation", "norm_cost", "step_cost",
           "uconv_kernels")
  unknown = set(FLAGS.what) - set(known)
  if unknown:
    common.fail(f"--what has {sorted(unknown)}; use {', '.join(known)}")
  if "render" in FLAGS.what:
    bench_render(config, workdir)
  if "loader" in FLAGS.what:
    bench_loader(config, workdir)
  if "step" in FLAGS.what:
    bench_step(common.config_variant(), workdir)
  if "latency" in FLAGS.what:
    bench_latency(common.config_variant(), workdir)
  if "evaluation" in FLAGS.what:
    bench_evaluation(workdir)
  if "norm_cost" in FLAGS.what:
    bench_norm_cost(workdir)
  if "step_cost" in FLAGS.what:
    bench_step_cost(common.config_variant(), workdir)
  if "uconv_kernels" in FLAGS.what:
    bench_uconv_kernels(workdir)
  print(f"table: {write_markdown(workdir)}")


if __name__ == "__main__":
  common.run(main)
