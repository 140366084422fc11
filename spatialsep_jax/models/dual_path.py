"""A SepFormer-style dual-path transformer separator (the backbone of NASS's seed), registered
as `dual_path_transformer`; channels-last, Flax linen.

  mixture [B, T, C_in] -> zero-pad to the encoder's frames
  -> encoder Conv1d(C_in -> N, kernel K, stride K/2) + ReLU = w [B, L, N]
  -> LayerNorm -> Dense(N -> D) -> chunks of `chunk_size` frames, 50% overlap [B, P, chunk, D]
  -> num_blocks x (intra-chunk transformer over `chunk` + residual,
                   inter-chunk transformer over P + residual), sinusoidal positions added
     before each transformer (as SepFormer)
  -> PReLU -> mask head Dense(D -> D S')  (S' = num_sources + extra_outputs: the noise output
     of NASS costs D^2 + D parameters here, 65,792 at the seed's D = 256)
  -> overlap-add back to [B, L, S', D] -> tanh(Dense) * sigmoid(Dense) gate -> Dense(D -> N)
  -> ReLU masks m_k -> m_k * w (the decoder inputs) -> shared ConvTranspose1d(N -> 1, K, K/2)
  -> [B, S', T]
Each transformer layer is pre-norm: x + MHA(LN(x)); x + FFN(LN(x)) with a ReLU FFN.

Sizes are set by `config.model` (`validate` lists them); `configs/nass_dualpath.py` uses a small
one that trains in minutes (the seed's SepFormer: N = D = 256, 2 blocks of 8 + 8 layers, 8 heads,
FFN 1024, chunk 250; 25.7 M parameters). With `pcl_head` the outputs add NASS's
representations (`spatialsep_jax/contrastive.py`), as the SuDoRM-RF does.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spatialsep_jax import contrastive
from spatialsep_jax.models import layers
from spatialsep_jax.models import registry

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """The transformer's sinusoidal position table `[length, dim]`."""
  position = np.arange(length)[:, None]
  rate = np.exp(-np.log(10000.0) * np.arange(0, dim, 2) / dim)
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(position * rate)
  table[:, 1::2] = np.cos(position * rate)[:, :dim // 2]
  return table


class TransformerLayer(nn.Module):
  """Pre-norm self-attention + ReLU feed-forward: `[N, S, D]` -> same shape."""
  num_heads: int
  ff_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    normed = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            name="attention")(normed, normed)
    normed = nn.LayerNorm(dtype=self.dtype, name="ff_norm")(x)
    hidden = nn.relu(nn.Dense(self.ff_dim, dtype=self.dtype, name="ff_in")(normed))
    return x + nn.Dense(x.shape[-1], dtype=self.dtype, name="ff_out")(hidden)


class PathTransformer(nn.Module):
  """Positions + `num_layers` transformer layers along axis -2 of `[N, S, D]`, then a final
  LayerNorm; the caller adds the residual."""
  num_layers: int
  num_heads: int
  ff_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + jnp.asarray(sinusoidal_positions(x.shape[-2], x.shape[-1]), self.dtype)
    for index in range(self.num_layers):
      x = TransformerLayer(self.num_heads, self.ff_dim, self.dtype, name=f"layer_{index}")(x)
    return nn.LayerNorm(dtype=self.dtype, name="out_norm")(x)


def to_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
  """`[B, L, D]` -> `[B, P, chunk, D]`, hop chunk/2, zero-padded by a half chunk at both ends
  and at the end to a whole number of hops."""
  hop = chunk_size // 2
  length = x.shape[1]
  num_chunks = -(-(length + hop) // hop)
  padded = jnp.pad(x, ((0, 0), (hop, num_chunks * hop + hop - length - hop), (0, 0)))
  index = np.arange(num_chunks)[:, None] * hop + np.arange(chunk_size)
  return padded[:, index]


def from_chunks(chunks: jax.Array, length: int) -> jax.Array:
  """Overlap-add of `to_chunks`'s layout `[B, P, chunk, ...]` back to `[B, length, ...]`."""
  batch, num_chunks, chunk_size = chunks.shape[:3]
  hop = chunk_size // 2
  first, second = chunks[:, :, :hop], chunks[:, :, hop:]
  # hop-sized pieces: piece p gets the first half of chunk p and the second half of chunk p-1
  pieces = jnp.pad(first, ((0, 0), (0, 1), (0, 0)) + ((0, 0),) * (chunks.ndim - 3))
  pieces = pieces.at[:, 1:].add(second)
  signal = pieces.reshape((batch, (num_chunks + 1) * hop) + chunks.shape[3:])
  return signal[:, hop:hop + length]


class DualPathTransformer(nn.Module):
  """`mixture [B, T, C_in]` -> float32 `[B, S', T]` (or, with `pcl_head` and references, the
  dict of `contrastive.representation_outputs`)."""
  num_sources: int = 2
  num_input_channels: int = 1
  extra_outputs: int = 0
  enc_basis: int = 256
  enc_kernel: int = 16
  model_dim: int = 256
  num_blocks: int = 2
  layers_per_path: int = 8
  num_heads: int = 8
  ff_dim: int = 1024
  chunk_size: int = 250
  dtype: Any = jnp.float32
  pcl_head: bool = False
  pcl_clean_key: str = "sources"
  pcl_noise_key: str = "noise"
  pcl_embed_dim: int = 256

  @property
  def num_outputs(self) -> int:
    return self.num_sources + self.extra_outputs

  @property
  def enc_stride(self) -> int:
    return self.enc_kernel // 2

  def encode(self, signals: jax.Array) -> jax.Array:
    """Encoder + ReLU: `[B', T', C_in]` -> `[B', L, N]`."""
    encoder = nn.Conv(self.enc_basis, (self.enc_kernel,), strides=(self.enc_stride,),
                      padding="VALID", use_bias=False, dtype=self.dtype, name="encoder")
    return nn.relu(encoder(signals.astype(self.dtype)))

  @nn.compact
  def __call__(self, mixture: jax.Array, train: bool = False, references: dict | None = None):
    del train
    if mixture.ndim != 3 or mixture.shape[-1] != self.num_input_channels:
      raise ValueError(f"DualPathTransformer expects a [B, T, {self.num_input_channels}] "
                       f"mixture, got shape {mixture.shape}; check data.input_channels")
    num_samples = mixture.shape[1]
    stride = self.enc_stride
    num_frames = max(1, -(-(num_samples - self.enc_kernel) // stride) + 1)
    padded_length = (num_frames - 1) * stride + self.enc_kernel
    mixture = jnp.pad(mixture.astype(jnp.float32), ((0, 0), (0, padded_length - num_samples),
                                                    (0, 0)))
    clean = None
    if self.pcl_head and references is not None:
      clean = contrastive.clean_signals(references, self.pcl_clean_key, self.pcl_noise_key,
                                        self.num_input_channels, padded_length)
    encoded, clean_encoded = contrastive.encode_with_clean(self.encode, mixture, clean)

    x = nn.LayerNorm(dtype=self.dtype, name="input_norm")(encoded)
    x = nn.Dense(self.model_dim, dtype=self.dtype, name="to_model")(x)
    chunks = to_chunks(x, self.chunk_size)                          # [B, P, chunk, D]
    batch, num_chunks, chunk_size, dim = chunks.shape
    for index in range(self.num_blocks):
      intra = PathTransformer(self.layers_per_path, self.num_heads, self.ff_dim, self.dtype,
                              name=f"block_{index}_intra")
      chunks = chunks + intra(chunks.reshape(batch * num_chunks, chunk_size, dim)).reshape(
          chunks.shape)
      inter = PathTransformer(self.layers_per_path, self.num_heads, self.ff_dim, self.dtype,
                              name=f"block_{index}_inter")
      across = jnp.swapaxes(chunks, 1, 2).reshape(batch * chunk_size, num_chunks, dim)
      chunks = chunks + jnp.swapaxes(inter(across).reshape(batch, chunk_size, num_chunks, dim),
                                     1, 2)
    chunks = layers.PReLU(dtype=self.dtype, name="mask_act")(chunks)
    per_output = nn.Dense(dim * self.num_outputs, dtype=self.dtype, name="mask_head")(chunks)
    per_output = per_output.reshape(chunks.shape[:3] + (self.num_outputs, dim))
    per_output = from_chunks(per_output, encoded.shape[1])         # [B, L, S', D]
    gated = (jnp.tanh(nn.Dense(dim, dtype=self.dtype, name="output")(per_output))
             * nn.sigmoid(nn.Dense(dim, dtype=self.dtype, name="output_gate")(per_output)))
    masks = nn.relu(nn.Dense(self.enc_basis, use_bias=False, dtype=self.dtype,
                             name="to_basis")(gated))
    decoder_inputs = masks * encoded[:, :, None, :]                 # [B, L, S', N]
    frames = jnp.swapaxes(decoder_inputs, 1, 2).reshape((-1,) + encoded.shape[1:])
    decoder = nn.ConvTranspose(1, (self.enc_kernel,), strides=(stride,), padding="VALID",
                               use_bias=False, dtype=self.dtype, name="decoder")
    estimates = decoder(frames)[:, :num_samples, 0].reshape(
        (mixture.shape[0], self.num_outputs, num_samples)).astype(jnp.float32)
    if not self.pcl_head:
      return estimates
    head = contrastive.head_if_needed(self, references, self.pcl_embed_dim)
    return contrastive.representation_outputs(estimates, decoder_inputs, clean_encoded, head)


FIELDS = ("extra_outputs", "enc_basis", "enc_kernel", "model_dim", "num_blocks",
          "layers_per_path", "num_heads", "ff_dim", "chunk_size", "pcl_head", "pcl_clean_key",
          "pcl_noise_key", "pcl_embed_dim")


def _fail(message):
  raise registry.ModelConfigError(message)


def validate(config) -> None:
  model_config = config.model
  for name in ("enc_basis", "enc_kernel", "model_dim", "num_blocks", "layers_per_path",
               "num_heads", "ff_dim", "chunk_size"):
    if name not in model_config or int(model_config[name]) < 1:
      _fail(f"config.model.{name} must be a positive integer (dual_path_transformer); got "
            f"{model_config.get(name)!r}")
  if model_config.enc_kernel % 2 or model_config.chunk_size % 2:
    _fail(f"config.model.enc_kernel={model_config.enc_kernel} and chunk_size="
          f"{model_config.chunk_size} must be even (stride and hop are halves)")
  if model_config.model_dim % model_config.num_heads or model_config.model_dim % 2:
    _fail(f"config.model.model_dim={model_config.model_dim} must be even and divisible by "
          f"num_heads={model_config.num_heads}")
  if model_config.get("extra_outputs", 0) < 0:
    _fail(f"config.model.extra_outputs={model_config.extra_outputs} must be >= 0")
  if model_config.get("pcl_head", False) and model_config.get("extra_outputs", 0) != 1:
    _fail("config.model.pcl_head=True contrasts the talkers with one noise output; set "
          "config.model.extra_outputs=1")
  if model_config.get("dtype", "float32") not in DTYPES:
    _fail(f"config.model.dtype={model_config.dtype!r} is not one of {tuple(DTYPES)}")


def train_inputs(config) -> tuple[str, ...]:
  if not config.model.get("pcl_head", False):
    return ()
  return (config.model.get("pcl_clean_key", "sources"), config.model.get("pcl_noise_key", "noise"))


@registry.register("dual_path_transformer", validate=validate, train_inputs=train_inputs)
def build(config) -> DualPathTransformer:
  model_config = config.model
  kwargs = {name: model_config[name] for name in FIELDS if name in model_config}
  return DualPathTransformer(num_sources=int(config.data.num_sources),
                             num_input_channels=len(config.data.input_channels),
                             dtype=DTYPES[model_config.get("dtype", "float32")], **kwargs)
