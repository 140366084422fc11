"""PyTorch peer of `launch/benchmark.py --what=step`: one SuDoRM-RF training step in PyTorch.

Times forward, PIT negative SI-SDR over the sources (clamped to [-30, 30] dB per example),
backward, gradient clipping at norm 5 and one Adam (1e-3) update, eagerly and under
`torch.compile`, in float32 and under bfloat16 autocast (parameters and loss stay float32, as
in the JAX step). The model is Asteroid's `SuDORMRFNet` at the study's hyperparameters when
Asteroid imports (one input channel only), else `TorchSuDORMRF` below: a PyTorch port of
`spatialsep_jax.models.sudormrf.SuDORMRF` with the same layers and sizes (2,577,078
parameters for the one-channel model, as the Flax model). Each row names its implementation.

Rows are appended to `<workdir>/results.jsonl` with "benchmark": "torch_step".

Usage:
  python3 launch/torch_peer.py --workdir=/tmp/bench                # eager + compile, fp32 + bf16
  python3 launch/torch_peer.py --dtype=bf16 --modes=compile --workdir=/tmp/bench
  python3 launch/torch_peer.py --tiny --workdir=/tmp/bench_tiny    # seconds on a CPU
"""

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

ASTEROID_NAME = "asteroid SuDORMRFNet"
PORT_NAME = "PyTorch port of spatialsep_jax SuDoRM-RF"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}


def global_layer_norm(channels: int) -> nn.GroupNorm:
  """GLN as in `layers.GlobalLayerNorm`: one group = statistics over channels and time per
  example, per-channel gain and bias, eps 1e-8. `[B, C, L]` -> same."""
  return nn.GroupNorm(1, channels, eps=1e-8)


class UConvBlock(nn.Module):
  """`[B, bottleneck, L]` -> same; the layer order of the Flax `UConvBlock`."""

  def __init__(self, bottleneck: int, channels: int, upsampling_depth: int = 4,
               dw_kernel: int = 5):
    super().__init__()
    self.expand = nn.Conv1d(bottleneck, channels, 1)
    self.expand_norm = global_layer_norm(channels)
    self.expand_act = nn.PReLU()
    self.depthwise = nn.ModuleList(
        nn.Conv1d(channels, channels, dw_kernel, stride=1 if level == 0 else 2,
                  padding=(dw_kernel - 1) // 2, groups=channels)
        for level in range(upsampling_depth))
    self.depthwise_norms = nn.ModuleList(
        global_layer_norm(channels) for _ in range(upsampling_depth))
    self.fused_norm = global_layer_norm(channels)
    self.fused_act = nn.PReLU()
    self.project = nn.Conv1d(channels, bottleneck, 1)
    self.project_norm = global_layer_norm(bottleneck)
    self.out_norm = global_layer_norm(bottleneck)
    self.out_act = nn.PReLU()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.expand_act(self.expand_norm(self.expand(x)))
    levels = []
    for conv, norm in zip(self.depthwise, self.depthwise_norms):
      levels.append(norm(conv(levels[-1] if levels else y)))
    fused = levels.pop()
    while levels:
      finer = levels.pop()
      fused = finer + torch.repeat_interleave(fused, 2, dim=-1)[..., :finer.shape[-1]]
    fused = self.fused_act(self.fused_norm(fused))
    out = self.project_norm(self.project(fused))
    return self.out_act(self.out_norm(out + x))


def ipd_map(mixture: torch.Tensor, n_fft: int, hop: int, num_frames: int) -> torch.Tensor:
  """The study's IPD feature: wrapped phase difference of channels 0 and 1 per STFT bin, one
  frame per encoder frame (hop = encoder stride, frames centred as the encoder's).
  `[B, 2, T]` -> `[B, n_fft // 2 + 1, num_frames]` in radians, float32 (the STFT runs in
  float32 under autocast, as `spatialsep_jax.features` does)."""
  window = torch.hann_window(n_fft, device=mixture.device)
  spectra = torch.stft(mixture[:, :2].float().reshape(-1, mixture.shape[-1]), n_fft, hop,
                       window=window, center=True, pad_mode="constant", return_complex=True)
  spectra = spectra.reshape(mixture.shape[0], 2, *spectra.shape[-2:])[..., :num_frames]
  return torch.angle(spectra[:, 0] * spectra[:, 1].conj())


class TorchSuDORMRF(nn.Module):
  """`mixture [B, C_in, T]` -> `[B, num_sources, T]` float32; see the Flax module's docstring
  for the layer list. With `ipd_bins` > 0 (the study's 2 ch + IPD model) the IPD map of
  channels 0 and 1 (`ipd_bins` = n_fft / 2 + 1 bins per encoder frame) is concatenated to the
  encoder output before the input norm and the blocks are E + ipd_bins wide; it is computed
  inside the step from the mixture, or taken as `forward(mixture, features)` when given
  (as the authors' code, which loads it with the data)."""

  def __init__(self, num_sources: int = 2, num_input_channels: int = 1, enc_basis: int = 512,
               enc_kernel: int = 21, enc_stride: int = 10, bottleneck: int = 128,
               num_blocks: int = 16, upsampling_depth: int = 4, dw_kernel: int = 5,
               ipd_bins: int = 0):
    super().__init__()
    if ipd_bins and num_input_channels < 2:
      raise ValueError("the IPD map needs two input channels (--input_channels=2)")
    self.ipd_bins = ipd_bins
    self.enc_stride = enc_stride
    block_channels = enc_basis + ipd_bins
    if enc_basis % num_input_channels:
      raise ValueError(f"enc_basis {enc_basis} must be a multiple of the {num_input_channels} "
                       "input channels (the encoder is grouped per channel)")
    self.num_sources = num_sources
    self.enc_basis = enc_basis
    self.length_multiple = math.lcm(enc_stride, 2 ** upsampling_depth)
    padding = enc_kernel // 2
    self.encoder = nn.Conv1d(num_input_channels, enc_basis, enc_kernel, stride=enc_stride,
                             padding=padding, groups=num_input_channels)
    self.input_norm = global_layer_norm(block_channels)
    self.to_bottleneck = nn.Conv1d(block_channels, bottleneck, 1)
    self.blocks = nn.Sequential(*[
        UConvBlock(bottleneck, block_channels, upsampling_depth, dw_kernel)
        for _ in range(num_blocks)])
    self.to_basis = nn.Conv1d(bottleneck, enc_basis, 1) if bottleneck != enc_basis else None
    self.mask = nn.Conv2d(1, num_sources, (enc_basis + 1, 1),
                          padding=(enc_basis - enc_basis // 2, 0))
    self.decoder = nn.ConvTranspose1d(enc_basis * num_sources, num_sources, enc_kernel,
                                      stride=enc_stride, padding=padding,
                                      output_padding=enc_stride - 1, groups=num_sources)

  def _padded(self, mixture: torch.Tensor) -> torch.Tensor:
    num_samples = mixture.shape[-1]
    padded_length = -(-num_samples // self.length_multiple) * self.length_multiple
    return F.pad(mixture, (0, padded_length - num_samples))

  def features_of(self, mixture: torch.Tensor) -> torch.Tensor:
    """The IPD map `[B, ipd_bins, frames]` that `forward` computes when none is given."""
    padded = self._padded(mixture)
    conv = self.encoder
    num_frames = ((padded.shape[-1] + 2 * conv.padding[0] - conv.kernel_size[0])
                  // conv.stride[0] + 1)
    return ipd_map(padded, 2 * (self.ipd_bins - 1), self.enc_stride, num_frames)

  def forward(self, mixture: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    batch, _, num_samples = mixture.shape
    encoded = F.relu(self.encoder(self._padded(mixture)))
    joint = encoded
    if self.ipd_bins:
      if features is None:
        features = self.features_of(mixture)
      joint = torch.cat([encoded, features.to(encoded.dtype)], dim=1)
    x = self.blocks(self.to_bottleneck(self.input_norm(joint)))
    if self.to_basis is not None:
      x = self.to_basis(x)
    masks = torch.softmax(self.mask(x.unsqueeze(1)).float(), dim=1).to(encoded.dtype)
    masked = (masks * encoded.unsqueeze(1)).reshape(batch, -1, encoded.shape[-1])
    estimates = self.decoder(masked)[..., :num_samples]
    return F.pad(estimates, (0, num_samples - estimates.shape[-1])).float()


def build_model(args) -> tuple[nn.Module, str]:
  """The model and the name of its implementation (Asteroid where importable and mono)."""
  if args.implementation in ("auto", "asteroid") and args.input_channels == 1:
    try:
      from asteroid.models import SuDORMRFNet
    except Exception as error:  # ImportError, or an API break in one of its dependencies
      if args.implementation == "asteroid":
        raise SystemExit(f"--implementation=asteroid but asteroid does not import ({error}); "
                         "pip install asteroid or use --implementation=port")
    else:
      return SuDORMRFNet(n_src=2, bn_chan=args.bottleneck, num_blocks=args.num_blocks,
                         upsampling_depth=4, mask_act="softmax", kernel_size=21,
                         n_filters=args.enc_basis, stride=10, sample_rate=8000), ASTEROID_NAME
  elif args.implementation == "asteroid":
    raise SystemExit("Asteroid's SuDORMRFNet takes one input channel; use "
                     "--input_channels=1 or --implementation=port")
  ipd_bins = args.n_fft // 2 + 1 if args.features == "ipd" else 0
  name = PORT_NAME + (f" + IPD ({args.ipd_source})" if ipd_bins else "")
  return TorchSuDORMRF(2, args.input_channels, args.enc_basis, bottleneck=args.bottleneck,
                       num_blocks=args.num_blocks, ipd_bins=ipd_bins), name


def pit_neg_sisdr(estimates: torch.Tensor, references: torch.Tensor, clamp_db: float = 30.0,
                  eps: float = 1e-8) -> torch.Tensor:
  """Mean over the batch of the clamped PIT negative zero-mean SI-SDR, as
  `spatialsep_jax.losses.separation_loss`. `[B, N, T]`, `[B, M, T]` -> scalar float32."""
  est = estimates.float() - estimates.float().mean(-1, keepdim=True)
  ref = references.float() - references.float().mean(-1, keepdim=True)
  dot = torch.einsum("bnt,bmt->bnm", est, ref)
  alpha = dot / (ref.square().sum(-1)[:, None, :] + eps)
  target = alpha[..., None] * ref[:, None]
  residual = est[:, :, None] - target
  pairwise = -10 * torch.log10((target.square().sum(-1) + eps) / (residual.square().sum(-1) + eps))
  num_refs = ref.shape[1]
  per_perm = torch.stack([
      pairwise[:, list(perm), list(range(num_refs))].mean(-1)
      for perm in itertools.permutations(range(est.shape[1]), num_refs)], dim=-1)
  return per_perm.min(-1).values.clamp(-clamp_db, clamp_db).mean()


def environment(device: torch.device) -> dict:
  name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
  return {"device": name, "torch": torch.__version__, "python": platform.python_version(),
          "cpus": os.cpu_count(),
          "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}


def record(workdir: str, row: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  row = {**row, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
  with open(os.path.join(workdir, "results.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
  print(json.dumps(row), flush=True)


def synchronize(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_mode(args, mode: str, dtype_flag: str, device: torch.device) -> dict:
  """Builds a fresh model and optimiser, runs warm-up and timed steps; returns the row."""
  torch.manual_seed(0)
  model, implementation = build_model(args)
  model.to(device).train()
  num_params = sum(p.numel() for p in model.parameters())
  row = {"benchmark": "torch_step", "implementation": implementation, "mode": mode,
         "dtype": DTYPE_NAMES[dtype_flag], "batch_size": args.batch_size,
         "input_channels": args.input_channels, "samples": args.samples,
         "sample_rate": args.sample_rate, "num_blocks": args.num_blocks,
         "enc_basis": args.enc_basis, "params": num_params, "features": args.features,
         "ipd_source": args.ipd_source if args.features == "ipd" else ""}
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
  generator = torch.Generator().manual_seed(0)
  sources = torch.randn(args.batch_size, 2, args.samples, generator=generator).to(device)
  # The mixture is the sum of the sources so that the loss starts inside the clamp and
  # gradients are non-zero.
  mixture = sources.sum(1, keepdim=True).repeat(1, args.input_channels, 1)
  if args.input_channels > 1:  # a small interaural delay, so the IPD map is not all zeros
    mixture[:, 1] = torch.roll(mixture[:, 1], 3, dims=-1)
  features = None
  if args.features == "ipd" and args.ipd_source == "input":
    with torch.no_grad():
      features = model.features_of(mixture)
  autocast = torch.autocast(device.type, dtype=DTYPES[dtype_flag],
                            enabled=dtype_flag != "fp32")

  def forward_loss(mixture, sources):
    with autocast:
      estimates = model(mixture, features)
    return pit_neg_sisdr(estimates, sources)

  loss_fn = torch.compile(forward_loss) if mode == "compile" else forward_loss

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(mixture, sources)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return loss

  if device.type == "cuda":
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
  try:
    start = time.perf_counter()
    loss = step()
    synchronize(device)
    row["compile_and_first_step_s"] = time.perf_counter() - start
    for _ in range(args.warmup):
      step()
    synchronize(device)
    times = []
    for _ in range(args.steps):
      start = time.perf_counter()
      loss = step()
      synchronize(device)
      times.append(time.perf_counter() - start)
  except Exception as error:  # a failed mode (e.g. torch.compile without a C compiler) is a row
    row["error"] = f"{type(error).__name__}: {error}"[:2000]
    return row
  step_s = statistics.median(times)
  row.update({
      "step_ms": 1e3 * step_s, "samples_per_s": args.batch_size / step_s,
      "audio_s_per_s": args.batch_size * args.samples / args.sample_rate / step_s,
      "final_loss": float(loss.detach()),
      "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                          if device.type == "cuda" else float("nan"))})
  return row


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="results.jsonl is appended here")
  parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both",
                      help="float32, bfloat16 autocast, or one row of each")
  parser.add_argument("--modes", default="eager,compile",
                      help="comma-separated subset of eager,compile")
  parser.add_argument("--implementation", choices=["auto", "asteroid", "port"], default="auto",
                      help="auto: Asteroid where it imports (mono only), else the port")
  parser.add_argument("--input_channels", type=int, default=1, choices=[1, 2])
  parser.add_argument("--features", choices=["none", "ipd"], default="none",
                      help="ipd: the study's 2 ch + IPD model (257-bin map concatenated)")
  parser.add_argument("--ipd_source", choices=["step", "input"], default="step",
                      help="step: the IPD map is computed inside the timed step (as the JAX "
                           "step does); input: precomputed once and given (the authors' code)")
  parser.add_argument("--n_fft", type=int, default=512)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--sample_rate", type=int, default=8000)
  parser.add_argument("--num_blocks", type=int, default=16)
  parser.add_argument("--enc_basis", type=int, default=512)
  parser.add_argument("--bottleneck", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
  parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                      help="TF32 float32 matmuls/convs on CUDA, as JAX's default precision")
  parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
  parser.add_argument("--tiny", action="store_true",
                      help="2 blocks, 32 basis, 1 s (T=8000), batch 2, 2 steps: a CPU smoke run")
  args = parser.parse_args(argv)
  args.samples = int(round(args.seconds * args.sample_rate))
  if args.tiny:
    args.num_blocks, args.enc_basis, args.bottleneck = 2, 32, 16
    args.samples, args.batch_size, args.steps, args.warmup = 8000, 2, 2, 1
  modes = args.modes.split(",")
  if not modes or any(mode not in ("eager", "compile") for mode in modes):
    parser.error(f"--modes={args.modes!r}: use a comma-separated subset of eager,compile")
  args.mode_list = modes
  # bf16 first: the comparison that counts gets the time when a stage limit cuts the rest.
  args.dtype_list = ["bf16", "fp32"] if args.dtype == "both" else [args.dtype]
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
  # JAX's default float32 precision on GPU lets XLA use TF32 for matmuls and convolutions.
  torch.backends.cuda.matmul.allow_tf32 = args.tf32
  torch.backends.cudnn.allow_tf32 = args.tf32
  env = {**environment(device), "tf32": args.tf32 and device.type == "cuda"}
  for dtype_flag in args.dtype_list:
    for mode in args.mode_list:
      record(args.workdir, {**time_mode(args, mode, dtype_flag, device), **env})


if __name__ == "__main__":
  main()
