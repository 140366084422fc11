"""Patch-wise contrastive loss (PCL) of noise-aware separation (NASS, SPEC.md section 3).

Representations (made by the separator: `clean_signals`, `encode_with_clean`, `head_if_needed`,
`representation_outputs`):
  decoder inputs   h_k = m_k * Enc(mixture)           `pcl_decoder_inputs [B, S', L, E]`
                   (S' = talkers + the noise output, the maps the decoder turns into waveforms)
  clean encodings  Enc(s_a) of each clean talker (and of the clean noise, for the "n->s"
                   direction) through the same encoder, under stop-gradient
                                                      `pcl_clean_encodings [B, S + 1, L, E]`
  head parameters  the sampler's parameters           `pcl_head` (a dict of arrays)

The loss term `pcl` then, for each example of the step:
  1. treats every [L x E] map as a one-channel image through a shared Conv2d(1, 1, 3) -> ReLU
     -> Conv2d(1, 1, 3) (valid padding, as the seed), giving an [(L-4) x (E-4)] map;
  2. draws K positions of that map once per step from the term's key (uniformly, without
     replacement) and reuses them for every estimate, target and example;
  3. embeds each sampled scalar by a shared MLP Linear(1, D) -> ReLU -> Linear(D, D) and
     L2-normalises it;
  4. for talker a (estimates reordered by the PIT permutation over [s1, ..., n]): query q_k from
     the estimate of a, positive p_k from the clean a (stop-gradient), negatives n_j from the
     noise estimate at the K positions (stop-gradient); logits [q_k.p_k, q_k.n_j] with the
     j = k entry set to -10 (all K negatives), divided by the temperature; cross-entropy with
     target 0 (InfoNCE); averaged over k and over talkers.
The term's `weight` in `config.loss.terms` is the seed's lambda (2).

`direction="n->s"` swaps the roles: query from the noise estimate, positive from the clean
noise, negatives from talker a's estimate (the seed's ablation names the two directions; what
"n->s" takes as positive is this project's reading). `num_negatives=M`, 0 < M < K, gives each query
the noise at the M positions after its own in the drawn order (never its own position),
instead of all K with the diagonal overwritten.

`input_norm` (a project option, not the seed's; default "none" = the seed): "standardize"
rescales to zero mean and unit standard deviation, with the mean and std under stop-gradient,
(a) each [L x E] representation map (per example and output/target, over the whole map)
before the shared conv, and (b) each map's K sampled conv outputs (over its K positions)
before the MLP: x' = (x - mean(x)) / (std(x) + 1e-5). Why: at initialisation the separators'
maps have values of ~0.07 and their sampled conv outputs a std of ~0.01 around the second
conv's bias, while the MLP's Linear(1, 256) has PyTorch-default weights and biases of magnitude
~0.5, so every value maps to nearly the same embedding (cos >= 0.997), the logits are equal
and InfoNCE sits at its chance value log K (reports/nass/README.md, `pcl_scale.json`). (b)
alone fixes the MLP's scale; (a) keeps the first conv's ReLU from being dead everywhere when
its bias (uniform +-1/3) is negative and larger than the map's variation (then (b) would see
a constant). The statistics carry no gradient.

Training-only parameters: the head lives under the top-level params key `pcl_head`, so the
optimiser trains it with the model; `inference_params` drops it, and the model never touches it
when it gets no references (inference), so exported models and parameter counts leave it out.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from spatialsep_jax import loss_terms
from spatialsep_jax import losses
from spatialsep_jax.models import layers

HEAD_NAME = "pcl_head"          # top-level params key of the training-only sampler
CONV_KERNEL = 3
RECEPTIVE = 2 * (CONV_KERNEL - 1) + 1   # two valid 3x3 convolutions: a 5x5 input patch
DIAGONAL_LOGIT = -10.0          # the seed's fill value for the query's own noise position
NORM_EPS = 1e-7                 # the seed's Normalize(2): x / (||x|| + 1e-7)
DIRECTIONS = ("s->n", "n->s")
INPUT_NORMS = ("none", "standardize")
STANDARDIZE_EPS = 1e-5          # added to the std of the K sampled values of a map


class PatchHead(nn.Module):
  """The sampler's parameters (conv -> ReLU -> conv, MLP 1 -> D -> D), returned as arrays so
  the loss term applies them at the sampled positions only. Initialised as PyTorch's defaults
  (the seed leaves its Conv2d/Linear layers at those)."""
  embed_dim: int = 256

  @nn.compact
  def __call__(self) -> dict:
    taps = CONV_KERNEL * CONV_KERNEL
    conv_init = layers.torch_uniform_init(taps)
    head = {}
    for name in ("conv1", "conv2"):
      head[name] = {"kernel": self.param(f"{name}_kernel", conv_init, (CONV_KERNEL, CONV_KERNEL)),
                    "bias": self.param(f"{name}_bias", conv_init, ())}
    head["mlp1"] = {"kernel": self.param("mlp1_kernel", layers.torch_uniform_init(1),
                                         (self.embed_dim,)),
                    "bias": self.param("mlp1_bias", layers.torch_uniform_init(1), (self.embed_dim,))}
    dense_init = layers.torch_uniform_init(self.embed_dim)
    head["mlp2"] = {"kernel": self.param("mlp2_kernel", dense_init,
                                         (self.embed_dim, self.embed_dim)),
                    "bias": self.param("mlp2_bias", dense_init, (self.embed_dim,))}
    return head


def clean_signals(references: dict, clean_key: str, noise_key: str, num_input_channels: int,
                  num_samples: int) -> jax.Array:
  """The clean talkers and the clean noise as encoder inputs `[B, S + 1, num_samples, C_in]`
  (zero-padded or cropped to the model's padded input length).

  `references[clean_key]` is `[B, S, T]` (one channel) or `[B, S, T, C_in]` (per input mic,
  e.g. "targets_direct" with data.target_mics = data.input_channels); `references[noise_key]`
  `[B, T]` or `[B, T, C_in]`."""
  missing = [key for key in (clean_key, noise_key) if key not in references]
  if missing:
    raise ValueError(f"the PCL model reads {missing} through its train inputs but got "
                     f"{sorted(references)}; register the model with train_inputs naming them")
  clean = references[clean_key].astype(jnp.float32)
  noise = references[noise_key].astype(jnp.float32)
  clean = clean[..., None] if clean.ndim == 3 else clean
  noise = noise[..., None] if noise.ndim == 2 else noise
  signals = jnp.concatenate([clean, noise[:, None]], axis=1)
  if signals.shape[-1] != num_input_channels:
    raise ValueError(f"PCL encodes the clean signals through the {num_input_channels}-channel "
                     f"encoder, but {clean_key!r}/{noise_key!r} have {signals.shape[-1]} "
                     "channels; set data.target_mics to data.input_channels")
  length = signals.shape[2]
  signals = signals[:, :, :num_samples]
  return jnp.pad(signals, ((0, 0), (0, 0), (0, max(num_samples - length, 0)), (0, 0)))


def encode_with_clean(encode, mixture: jax.Array, clean: jax.Array | None):
  """One pass of the separator's encoder over the mixture `[B, T, C]` and the clean signals
  `[B, S + 1, T, C]` (or None): (Enc(mixture) `[B, L, E]`, stop-gradient Enc(clean)
  `[B, S + 1, L, E]` or None). One call, so the encoder's parameters are the same ones."""
  if clean is None:
    return encode(mixture), None
  batch, num_signals = clean.shape[:2]
  encoded = encode(jnp.concatenate([mixture, clean.reshape((-1,) + clean.shape[2:])], axis=0))
  clean_encoded = encoded[batch:].reshape((batch, num_signals) + encoded.shape[1:])
  return encoded[:batch], jax.lax.stop_gradient(clean_encoded)


def representation_outputs(estimates: jax.Array, decoder_inputs: jax.Array,
                           clean_encoded: jax.Array | None, head: dict | None):
  """The separator's outputs: `estimates [B, S', T]` alone without references, else
  {"estimates", "pcl_decoder_inputs" [B, S', L, E] (from the decoder's `[B, L, S', E]`),
  "pcl_clean_encodings" [B, S + 1, L, E], "pcl_head"}."""
  if clean_encoded is None:
    return estimates
  return {"estimates": estimates,
          "pcl_decoder_inputs": jnp.moveaxis(decoder_inputs, 2, 1),
          "pcl_clean_encodings": clean_encoded,
          "pcl_head": head}


def head_if_needed(module: nn.Module, references, embed_dim: int = 256) -> dict | None:
  """The PCL head's parameters (created at initialisation even without references, so the
  trainer's `init` makes them), or None at inference, where they are never read."""
  if references is None and not module.is_initializing():
    return None
  return PatchHead(embed_dim, name=HEAD_NAME)()


def inference_params(params: dict) -> dict:
  """`params` without the training-only PCL head (what inference and exports need)."""
  return {key: value for key, value in params.items() if key != HEAD_NAME}


def patch_values(maps: jax.Array, head: dict, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """conv2(relu(conv1(map))) (valid 3x3 cross-correlations, as torch's Conv2d) at output
  positions (rows, cols): `maps [..., H, W]`, rows/cols `[K]` -> `[..., K]`.

  Hand-written rather than a full `lax.conv` followed by a gather: each output value depends
  on a 5x5 input patch only, so computing the K patches gives the same numbers (tested against
  `lax.conv_general_dilated`) without convolving the whole [L x E] maps of every output."""
  offsets = jnp.arange(RECEPTIVE)
  patches = maps[..., rows[:, None, None] + offsets[:, None], cols[:, None, None] + offsets]

  def conv(x, layer):  # x [..., K, n, n] -> [..., K, n - 2, n - 2]
    size = x.shape[-1] - CONV_KERNEL + 1
    out = sum(layer["kernel"][a, b] * x[..., a:a + size, b:b + size]
              for a in range(CONV_KERNEL) for b in range(CONV_KERNEL))
    return out + layer["bias"]

  hidden = jax.nn.relu(conv(patches.astype(jnp.float32), head["conv1"]))
  return conv(hidden, head["conv2"])[..., 0, 0]


def embed(head: dict, values: jax.Array) -> jax.Array:
  """The shared MLP on each sampled scalar, L2-normalised: `[...]` -> `[..., D]`."""
  hidden = jax.nn.relu(values[..., None] * head["mlp1"]["kernel"] + head["mlp1"]["bias"])
  out = hidden @ head["mlp2"]["kernel"] + head["mlp2"]["bias"]
  return out / (jnp.linalg.norm(out, axis=-1, keepdims=True) + NORM_EPS)


def standardize(values: jax.Array, axes=(-1,)) -> jax.Array:
  """`input_norm="standardize"`: `values` to zero mean and unit (population) std over `axes`
  (the K sampled values `(-1,)`, or a whole [L x E] map `(-2, -1)`), the statistics under
  stop-gradient."""
  mean = jax.lax.stop_gradient(jnp.mean(values, axis=axes, keepdims=True))
  std = jax.lax.stop_gradient(jnp.std(values, axis=axes, keepdims=True))
  return (values - mean) / (std + STANDARDIZE_EPS)


def sample_positions(rng: jax.Array, height: int, width: int, num_positions: int):
  """K distinct positions of an [height x width] map, uniformly: (rows [K], cols [K])."""
  if num_positions > height * width:
    raise ValueError(f"PCL num_positions={num_positions} exceeds the {height} x {width} "
                     "positions of the representation; lower num_positions")
  flat = jax.random.choice(rng, height * width, (num_positions,), replace=False)
  return flat // width, flat % width


def info_nce(query: jax.Array, positive: jax.Array, negatives: jax.Array, temperature: float,
             num_negatives: int = 0) -> jax.Array:
  """InfoNCE per query: `[..., K, D]` each -> `[..., K]`.

  All K negatives (num_negatives 0 or >= K): logits [q_k.p_k, q_k.n_1, ..., q_k.n_K] with
  q_k.n_k set to -10, over the temperature, cross-entropy with class 0. M < K negatives: the
  noise at positions k+1, ..., k+M (mod K)."""
  num_queries = query.shape[-2]
  positive_logit = jnp.sum(query * positive, axis=-1)[..., None]
  if not num_negatives or num_negatives >= num_queries:
    negative_logits = jnp.einsum("...kd,...jd->...kj", query, negatives)
    negative_logits = jnp.where(jnp.eye(num_queries, dtype=bool), DIAGONAL_LOGIT, negative_logits)
  else:
    index = (jnp.arange(num_queries)[:, None] + jnp.arange(1, num_negatives + 1)) % num_queries
    negative_logits = jnp.einsum("...kd,...kmd->...km", query, negatives[..., index, :])
  logits = jnp.concatenate([positive_logit, negative_logits], axis=-1) / temperature
  return jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]


def _pcl_keys(settings):
  return (settings.get("targets", "sources"),) + tuple(settings.get("stems", ("noise",)))


@loss_terms.register("pcl", batch_keys=_pcl_keys)
def patch_contrastive_loss(outputs, batch, rng, *, num_positions=256, temperature=0.07,
                           num_negatives=0, direction="s->n", targets="sources",
                           stems=("noise",), input_norm="none"):
  """PCL per example `[B]` (mean over talkers and positions; the term's weight is lambda).
  `input_norm`: "none" (the seed) or "standardize" (see the module doc).

  The talker/noise pairing is the PIT permutation of negative SI-SDR over
  [`targets`..., `stems`...] (the one `pit_sisdr` with extra_outputs='permute' chooses)."""
  if direction not in DIRECTIONS:
    raise loss_terms.LossConfigError(f"pcl direction={direction!r} is not one of {DIRECTIONS}")
  if input_norm not in INPUT_NORMS:
    raise loss_terms.LossConfigError(f"pcl input_norm={input_norm!r} is not one of {INPUT_NORMS}")
  if "pcl_decoder_inputs" not in outputs:
    raise loss_terms.LossConfigError(
        "the pcl term needs the model's representations; set config.model.pcl_head=True "
        "(and model.extra_outputs=1 for the noise output)")
  estimates = outputs["estimates"].astype(jnp.float32)
  references = jnp.concatenate(
      [batch[targets].astype(jnp.float32)]
      + [batch[key].astype(jnp.float32)[:, None] for key in stems], axis=1)
  if estimates.shape[1] != references.shape[1]:
    raise loss_terms.LossConfigError(
        f"pcl pairs {estimates.shape[1]} outputs with {references.shape[1]} references "
        f"({targets} + {list(stems)}); the model needs one noise output (model.extra_outputs=1)")
  _, perm = losses.pit(jax.lax.stop_gradient(losses.pairwise_neg_sisdr(estimates, references)))
  head = outputs["pcl_head"]
  decoder_inputs = outputs["pcl_decoder_inputs"]                        # [B, S', L, E]
  height, width = decoder_inputs.shape[-2] - RECEPTIVE + 1, decoder_inputs.shape[-1] - RECEPTIVE + 1
  rows, cols = sample_positions(rng, height, width, num_positions)
  clean_maps = outputs["pcl_clean_encodings"]                           # [B, S + 1, L, E]
  if input_norm == "standardize":
    decoder_inputs = standardize(decoder_inputs.astype(jnp.float32), (-2, -1))
    clean_maps = standardize(clean_maps.astype(jnp.float32), (-2, -1))
  values = patch_values(decoder_inputs, head, rows, cols)               # [B, S', K]
  clean_values = patch_values(clean_maps, head, rows, cols)
  if input_norm == "standardize":
    values, clean_values = standardize(values), standardize(clean_values)
  # Reordered after sampling: the PIT pairing moves K values per map, not the whole maps.
  estimated = embed(head, losses.reorder(values, perm))
  clean = jax.lax.stop_gradient(embed(head, clean_values))
  noise_estimate = estimated[:, -1]
  num_talkers = estimated.shape[1] - 1
  per_talker = []
  for talker in range(num_talkers):
    if direction == "s->n":
      query, positive = estimated[:, talker], clean[:, talker]
      negatives = jax.lax.stop_gradient(noise_estimate)
    else:
      query, positive = noise_estimate, clean[:, -1]
      negatives = jax.lax.stop_gradient(estimated[:, talker])
    per_talker.append(jnp.mean(info_nce(query, positive, negatives, temperature, num_negatives),
                               axis=-1))
  return jnp.mean(jnp.stack(per_talker, axis=-1), axis=-1), {}
