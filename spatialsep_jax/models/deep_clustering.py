"""Deep clustering (Hershey et al., ICASSP 2016): an embedding per time-frequency bin, trained
so that bins dominated by the same talker point the same way; k-means masks at inference.

Registered as the model `deep_clustering` and the loss term `dc_affinity`:

  config.model.name = "deep_clustering"
  config.loss.terms = {"dc": {"term": "dc_affinity", "weight": 1.0, "n_fft": 256, "hop": 64}}

Signal path (`B` batch, `T` samples, `C` input channels, `L` frames, `F = n_fft // 2 + 1`,
`D` embedding size, `S` talkers):

  mixture [B, T, C] -> STFT of the reference channel (`model.input_spectra="reference"`) or of
  every channel ("all", features concatenated to [B, L, C*F]) -> log magnitude (or |X|^0.3),
  normalised per example -> BLSTM stack (or dilated temporal convs) -> Dense(F*D) -> tanh ->
  unit norm over D -> embeddings [B, L*F, D].
  train=False only: k-means over the embeddings of the mixture's active bins (within
  `model.activity_threshold_db` of its loudest bin) -> one-hot masks [B, L*F, S] on the
  reference channel's STFT -> inverse STFT -> estimates [B, S, T].

The STFT here is the one of `features.stft` on frames centred at `l * hop` (periodic Hann,
zero padding, L = ceil(T / hop) + 1 frames); `istft` is its exact inverse (weighted
overlap-add divided by the summed squared window), so unmasked spectra give back the input.

The loss `dc_affinity` is ||V V^T - Y Y^T||_F^2 / (sum of weights)^2 with Y the ideal binary
assignments of `batch["sources"]` [B, S, T] on the same STFT and the bins within
`threshold_db` of the loudest bin of their sum as weights (`losses.deep_clustering_targets`,
`losses.deep_clustering_loss`, low rank).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spatialsep_jax import features
from spatialsep_jax import loss_terms
from spatialsep_jax import losses
from spatialsep_jax.models import registry

EMBEDDING_NETS = ("blstm", "conv")
INPUT_SPECTRA = ("reference", "all")
SPECTRAL_FEATURES = ("log", "compressed")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TERM_NAME = "dc_affinity"
COMPRESSION_EXPONENT = 0.3
LOG_FLOOR = 1e-6


# ------------------------------------------------------------------ STFT and its inverse


def num_frames(num_samples: int, hop: int) -> int:
  """Frames `L` of `stft` on `num_samples` samples: centres 0, hop, ... up to >= T - 1."""
  return -(-int(num_samples) // int(hop)) + 1


def stft(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """`x [B, T]` -> complex `[B, L, n_fft // 2 + 1]`, frame `l` centred on sample `l * hop`."""
  return features.stft(x, n_fft, hop, num_frames(x.shape[-1], hop), center_offset=0)


def _squared_window_sum(n_fft: int, hop: int, frames: int) -> np.ndarray:
  """Sum over frames of the squared window at each sample of the overlap-add buffer."""
  window = features.hann_window(n_fft) ** 2
  total = np.zeros((frames - 1) * hop + n_fft)
  for index in range(frames):
    total[index * hop:index * hop + n_fft] += window
  return total


def istft(spectrum: jax.Array, n_fft: int, hop: int, length: int) -> jax.Array:
  """Inverse of `stft`: complex `[B, L, F]` -> `[B, length]` float32 (needs n_fft % hop == 0).

  Weighted overlap-add: each frame is windowed again, summed into place and the sum divided
  by the summed squared window, which gives the least-squares signal of a (possibly masked,
  hence inconsistent) spectrum and exactly the input of an unmodified one.
  """
  batch, frames = spectrum.shape[:2]
  ratio = n_fft // hop
  window = jnp.asarray(features.hann_window(n_fft), jnp.float32)
  chunks = (jnp.fft.irfft(spectrum, n=n_fft, axis=-1) * window).reshape(
      batch, frames, ratio, hop)
  # Chunk k of frame l lands on hop-block l + k of the buffer that starts at sample -n_fft/2.
  buffer = jnp.zeros((batch, frames + ratio - 1, hop), jnp.float32)
  for k in range(ratio):
    buffer = buffer.at[:, k:k + frames].add(chunks[:, :, k])
  buffer = buffer.reshape(batch, -1)
  norm = _squared_window_sum(n_fft, hop, frames)
  inverse = np.where(norm > 1e-6, 1.0 / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
  start = n_fft // 2
  return (buffer * inverse)[:, start:start + length]


def active_bins(spectrum: jax.Array, threshold_db: float) -> jax.Array:
  """`[B, L, F]` complex -> `[B, L*F]` float32 1 where the bin is within `threshold_db` of the
  loudest bin of its example (the rule of `losses.deep_clustering_targets`)."""
  level = 20.0 * jnp.log10(jnp.abs(spectrum) + 1e-8)
  peak = jnp.max(level, axis=(1, 2), keepdims=True)
  return (level > peak - threshold_db).astype(jnp.float32).reshape(spectrum.shape[0], -1)


def masked_estimates(embeddings: jax.Array, spectrum: jax.Array, *, num_sources: int,
                     n_fft: int, hop: int, length: int, threshold_db: float = 40.0,
                     kmeans_iters: int = 20) -> jax.Array:
  """K-means read-out: embeddings `[B, L*F, D]` and the complex reference spectrum
  `[B, L, F]` -> estimates `[B, S, length]` (one hard mask per cluster, inverted).

  Only the active bins move the centroids; every bin is then given to its nearest centroid."""
  batch, frames, bins = spectrum.shape
  weights = active_bins(spectrum, threshold_db)
  masks, _ = losses.kmeans_masks(jax.lax.stop_gradient(embeddings.astype(jnp.float32)),
                                 num_sources=num_sources, num_iters=kmeans_iters,
                                 weights=weights)
  masks = jnp.moveaxis(masks.reshape(batch, frames, bins, num_sources), -1, 1)
  masked = masks * spectrum[:, None]
  waves = istft(masked.reshape(batch * num_sources, frames, bins), n_fft, hop, length)
  return waves.reshape(batch, num_sources, length)


# ------------------------------------------------------------------ the module


class DeepClustering(nn.Module):
  """Embedding network on STFT magnitudes; `__call__(mixture [B, T, C], train)` returns
  {"embeddings": [B, L*F, D] unit-norm float32} and, when `train=False`,
  {"estimates": [B, S, T] float32} from k-means masks."""
  num_sources: int = 2
  n_fft: int = 256
  hop: int = 64
  spectral_feature: str = "log"
  input_spectra: str = "reference"
  reference_channel: int = 0
  embedding_net: str = "blstm"
  num_layers: int = 2
  hidden: int = 128
  embedding_dim: int = 20
  conv_kernel: int = 3
  kmeans_iters: int = 20
  activity_threshold_db: float = 40.0
  dtype: Any = jnp.float32

  def _spectra(self, mixture):
    batch, length, channels = mixture.shape
    channels_first = jnp.moveaxis(mixture.astype(jnp.float32), -1, 1).reshape(-1, length)
    spectra = stft(channels_first, self.n_fft, self.hop)
    return spectra.reshape(batch, channels, *spectra.shape[1:])      # [B, C, L, F]

  def _features(self, spectra):
    magnitude = jnp.abs(spectra)
    if self.spectral_feature == "log":
      values = jnp.log(magnitude + LOG_FLOOR)
    else:
      values = magnitude ** COMPRESSION_EXPONENT
    # Per example and channel over (L, F): a gain change of the input only shifts a log
    # spectrum, so the embeddings do not depend on the level.
    mean = jnp.mean(values, axis=(2, 3), keepdims=True)
    std = jnp.std(values, axis=(2, 3), keepdims=True)
    values = (values - mean) / (std + 1e-5)
    batch, channels, frames, bins = values.shape
    return jnp.moveaxis(values, 1, 2).reshape(batch, frames, channels * bins)

  def _embedding_net(self, x):
    if self.embedding_net == "blstm":
      for index in range(self.num_layers):
        # Cells made here belong to this module: named per layer and direction.
        forward = nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype, name=f"lstm_{index}_fwd")
        backward = nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype, name=f"lstm_{index}_bwd")
        x = nn.Bidirectional(nn.RNN(forward), nn.RNN(backward))(x)
      return x
    # Dilated temporal convolutions (frames as time, bins as channels), pre-norm residual.
    x = nn.Dense(self.hidden, dtype=self.dtype, name="conv_in")(x)
    for index in range(self.num_layers):
      y = nn.LayerNorm(dtype=self.dtype, name=f"norm_{index}")(x)
      y = nn.Conv(self.hidden, (self.conv_kernel,), kernel_dilation=(2 ** (index % 5),),
                  padding="SAME", dtype=self.dtype, name=f"conv_{index}")(y)
      x = x + nn.gelu(y)
    return nn.LayerNorm(dtype=self.dtype, name="conv_out_norm")(x)

  @nn.compact
  def __call__(self, mixture, train: bool = False):
    """mixture `[B, T, C]` -> {"embeddings" [B, L*F, D], "estimates" [B, S, T] (train=False)}."""
    batch, length, _ = mixture.shape
    spectra = jax.lax.stop_gradient(self._spectra(mixture))         # [B, C, L, F]
    selected = spectra if self.input_spectra == "all" else \
        spectra[:, self.reference_channel:self.reference_channel + 1]
    hidden = self._embedding_net(self._features(selected).astype(self.dtype))
    frames, bins = spectra.shape[2:]
    projected = nn.Dense(bins * self.embedding_dim, dtype=self.dtype, name="embedding")(hidden)
    embeddings = jnp.tanh(projected.astype(jnp.float32)).reshape(
        batch, frames * bins, self.embedding_dim)
    embeddings = embeddings / jnp.sqrt(jnp.sum(embeddings ** 2, axis=-1, keepdims=True) + 1e-12)
    outputs = {"embeddings": embeddings}
    if not train:
      outputs["estimates"] = masked_estimates(
          embeddings, spectra[:, self.reference_channel], num_sources=self.num_sources,
          n_fft=self.n_fft, hop=self.hop, length=length,
          threshold_db=self.activity_threshold_db, kmeans_iters=self.kmeans_iters)
    return outputs


# ------------------------------------------------------------------ registration


def _fail(message):
  raise registry.ModelConfigError(message)


def validate(config) -> None:
  model = config.model
  n_fft, hop = int(model.n_fft), int(model.get("hop", 0))
  if n_fft < 4 or n_fft % 2:
    _fail(f"config.model.n_fft={n_fft} must be an even number >= 4")
  if hop <= 0 or n_fft % hop or n_fft // hop < 2:
    _fail(f"config.model.hop={hop} must divide config.model.n_fft={n_fft} at least twice "
          "(e.g. n_fft // 4) for an exact inverse STFT")
  choices = (("embedding_net", EMBEDDING_NETS), ("input_spectra", INPUT_SPECTRA),
             ("spectral_feature", SPECTRAL_FEATURES), ("dtype", tuple(DTYPES)))
  for field, allowed in choices:
    if model.get(field) not in allowed:
      _fail(f"config.model.{field}={model.get(field)!r} is not one of {allowed}")
  for field in ("num_layers", "hidden", "embedding_dim", "kmeans_iters", "conv_kernel"):
    if int(model.get(field, 0)) < 1:
      _fail(f"config.model.{field}={model.get(field)} must be a positive integer")
  num_channels = len(config.data.input_channels)
  if not 0 <= int(model.reference_channel) < num_channels:
    _fail(f"config.model.reference_channel={model.reference_channel} is not an index into the "
          f"{num_channels} config.data.input_channels")
  if int(config.data.num_sources) < 2:
    _fail(f"deep clustering needs config.data.num_sources >= 2 clusters (got "
          f"{config.data.num_sources})")
  if float(model.activity_threshold_db) <= 0:
    _fail(f"config.model.activity_threshold_db={model.activity_threshold_db} must be > 0 dB")
  for label, entry in config.loss.get("terms", {}).items():
    if entry.get("term", label) != TERM_NAME:
      continue
    got = (entry.get("n_fft"), entry.get("hop"))
    if got != (n_fft, hop):
      _fail(f"config.loss.terms.{label} has n_fft, hop = {got}, the model's STFT is "
            f"({n_fft}, {hop}); set them equal (configs/deep_clustering.py links them)")


@registry.register("deep_clustering", validate=validate)
def build(config) -> DeepClustering:
  model = config.model
  return DeepClustering(
      num_sources=int(config.data.num_sources), n_fft=int(model.n_fft), hop=int(model.hop),
      spectral_feature=model.spectral_feature, input_spectra=model.input_spectra,
      reference_channel=int(model.reference_channel), embedding_net=model.embedding_net,
      num_layers=int(model.num_layers), hidden=int(model.hidden),
      embedding_dim=int(model.embedding_dim), conv_kernel=int(model.conv_kernel),
      kmeans_iters=int(model.kmeans_iters),
      activity_threshold_db=float(model.activity_threshold_db), dtype=DTYPES[model.dtype])


@loss_terms.register(TERM_NAME, batch_keys=("sources",))
def dc_affinity(outputs, batch, rng, *, n_fft=None, hop=None, threshold_db=40.0,
                embeddings_key="embeddings"):
  """Deep clustering affinity loss of `outputs[embeddings_key]` [B, L*F, D] against the ideal
  binary assignments of `batch["sources"]` [B, S, T] -> (per-example [B], {"active_bins"})."""
  del rng
  if n_fft is None or hop is None:
    raise loss_terms.LossConfigError(f"the {TERM_NAME} term needs n_fft and hop settings (the "
                                     "model's STFT, config.model.n_fft / config.model.hop)")
  sources = batch["sources"].astype(jnp.float32)
  batch_size, num_sources, length = sources.shape
  spectra = stft(sources.reshape(batch_size * num_sources, length), n_fft, hop)
  spectra = spectra.reshape(batch_size, num_sources, *spectra.shape[1:])
  assignments, weights = losses.deep_clustering_targets(spectra, threshold_db)
  embeddings = outputs[embeddings_key]
  if embeddings.shape[:2] != assignments.shape[:2]:
    raise loss_terms.LossConfigError(
        f"{TERM_NAME}: {embeddings_key} {embeddings.shape} has not the {assignments.shape[1]} "
        f"bins of the sources' STFT (n_fft={n_fft}, hop={hop}); use the model's STFT settings")
  per_example = losses.deep_clustering_loss(embeddings, assignments, weights)
  return per_example, {"active_bins": jnp.mean(weights, axis=-1)}
