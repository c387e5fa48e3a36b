"""DMS (Dynamic Memory Sparsification, arXiv 2506.05345): learned, delayed KV-cache eviction (SPEC §5).

Each (layer, KV head, token) gets a decision logit `a = scale * x - offset`. The decision of token t+1 says whether
token t is evicted; eviction is delayed: query q sees key k without penalty while q - k <= window. During training
the decision is a Gumbel-sigmoid relaxation and keys beyond the window get the additive bias log(1 - alpha_{k+1});
at inference a token is evicted iff a > 0, which the "hard" mode reproduces exactly as a mask.

Eviction lives in the cache the decoder is given: `DMSKVCache` (dms_cache.py) for generation, `SequenceEviction`
here for a full-sequence forward (training, evaluation); a DMS model run without a cache evicts nothing (teacher).

Letters: B batch, T tokens, S keys, H query heads, K KV heads, D head dim, L layers.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from jaxpost.models.attention import grouped_attention, segment_causal_mask

DMS_VARIANTS = ("query_neuron", "adapter")
DMS_MODES = ("soft", "hard")  # training relaxation | inference decisions (a > 0)
MASKED = -1e30  # finite: a query whose keys are all masked gets a uniform row instead of NaN


@dataclasses.dataclass(frozen=True, kw_only=True)
class DMSConfig:
  """variant: where x comes from (`query_neuron`: last channel of each group's first query head after q-norm;
  `adapter`: zero-initialised Linear(d_model -> K) on an RMSNorm of the residual input). window: keys at distance
  <= window from the query are never evicted. tau: relaxation temperature. scale, offset: a = scale * x - offset."""

  variant: str = "query_neuron"
  window: int = 512
  tau: float = 0.1
  scale: float = 100.0
  offset: float = 5.0

  def __post_init__(self):
    if self.variant not in DMS_VARIANTS:
      raise ValueError(f"DMSConfig.variant {self.variant!r} is not one of {DMS_VARIANTS}")
    if self.window < 0:
      raise ValueError(f"DMSConfig.window must be >= 0, got {self.window}")
    if self.tau <= 0:
      raise ValueError(f"DMSConfig.tau must be positive, got {self.tau}")


def split_query_neuron(q_BxTxHxD: jax.Array, num_kv_heads: int) -> tuple[jax.Array, jax.Array]:
  """(x [B,T,K]: the last channel of the first query head of each group, q with that channel zeroed)."""
  b, t, h, d = q_BxTxHxD.shape
  q_BxTxKxGxD = q_BxTxHxD.reshape(b, t, num_kv_heads, h // num_kv_heads, d)
  x_BxTxK = q_BxTxKxGxD[:, :, :, 0, -1]
  return x_BxTxK, zero_query_neuron(q_BxTxHxD, num_kv_heads)


def zero_query_neuron(q_BxTxHxD: jax.Array, num_kv_heads: int) -> jax.Array:
  """Zeroes the repurposed channel; needed again after RoPE, which rotates its paired channel into it."""
  b, t, h, d = q_BxTxHxD.shape
  q_BxTxKxGxD = q_BxTxHxD.reshape(b, t, num_kv_heads, h // num_kv_heads, d)
  return q_BxTxKxGxD.at[:, :, :, 0, -1].set(0).reshape(b, t, h, d)


def decision_logits(x_BxTxK: jax.Array, cfg: DMSConfig) -> jax.Array:
  """a = scale * x - offset, in float32."""
  return cfg.scale * x_BxTxK.astype(jnp.float32) - cfg.offset


def relaxed_decisions(a_BxTxK: jax.Array, cfg: DMSConfig, rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(l = (a + g1 - g2) / tau, straight-through hard decisions 1[sigmoid(l) > 0.5] with the gradient of sigmoid(l)).

  g1 - g2 of two Gumbel(0, 1) draws is Logistic(0, 1), sampled directly; rng None means no noise.
  """
  noise = 0.0 if rng is None else jax.random.logistic(rng, a_BxTxK.shape, jnp.float32)
  l_BxTxK = (a_BxTxK + noise) / cfg.tau
  p_BxTxK = jax.nn.sigmoid(l_BxTxK)
  hard_BxTxK = (l_BxTxK > 0).astype(jnp.float32)
  return l_BxTxK, hard_BxTxK - jax.lax.stop_gradient(p_BxTxK) + p_BxTxK


def delayed_eviction_bias(log_keep_BxTxK: jax.Array, window: int) -> jax.Array:
  """[B, K, T, T] bias: query q gets log_keep of the key's successor (k + 1) for keys with q - k > window, 0 else.

  Token indices stand for distances, so the real tokens of a segment must be contiguous (packing and left/right
  padding are). The last key has no successor but no query lies beyond the window from it.
  """
  t = log_keep_BxTxK.shape[1]
  successor_BxKxT = jnp.pad(log_keep_BxTxK[:, 1:], ((0, 0), (0, 1), (0, 0))).transpose(0, 2, 1)
  index = jnp.arange(t)
  far_TxT = index[:, None] - index[None, :] > window
  return jnp.where(far_TxT, successor_BxKxT[:, :, None, :], 0.0)


def eviction_bias(a_BxTxK: jax.Array, cfg: DMSConfig, *, mode: str,
                  rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(attention bias [B,K,T,T], decisions [B,T,K]) of one layer in the full forward.

  soft: bias log sigmoid(-l_{k+1}) of the noisy relaxation, straight-through decisions (for the compression loss).
  hard: no noise, evicted keys beyond the window masked out: exactly what the compressed cache attends to.
  """
  if mode == "soft":
    l_BxTxK, decisions_BxTxK = relaxed_decisions(a_BxTxK, cfg, rng)
    return delayed_eviction_bias(jax.nn.log_sigmoid(-l_BxTxK), cfg.window), decisions_BxTxK
  evict_BxTxK = a_BxTxK > 0
  log_keep_BxTxK = jnp.where(evict_BxTxK, MASKED, 0.0)
  return delayed_eviction_bias(log_keep_BxTxK, cfg.window), evict_BxTxK.astype(jnp.float32)


@flax.struct.dataclass
class SequenceEviction:
  """KVCache-protocol pass for a full-sequence forward with DMS eviction (not a store: it sees the whole sequence).

  Each layer attends causally within segments with the delayed-eviction bias of `mode` and records its decisions,
  so `model(tokens, positions=..., segment_ids=..., cache=SequenceEviction.create(...))` returns them.
  """

  segment_ids_BxT: jax.Array
  rng: jax.Array | None
  decisions: tuple[jax.Array, ...] = ()  # per layer [B, T, K], in layer order
  cfg: DMSConfig = flax.struct.field(pytree_node=False, default=DMSConfig())
  mode: str = flax.struct.field(pytree_node=False, default="hard")

  @classmethod
  def create(cls, cfg: DMSConfig, segment_ids_BxT: jax.Array, *, mode: str = "hard",
             rng: jax.Array | None = None) -> "SequenceEviction":
    """mode "soft" (noisy when `rng` is given) for training, "hard" for the inference decisions a > 0."""
    if mode not in DMS_MODES:
      raise ValueError(f"SequenceEviction: mode {mode!r} is not one of {DMS_MODES}")
    return cls(segment_ids_BxT=segment_ids_BxT, rng=rng, cfg=cfg, mode=mode)

  def begin_step(self, valid_BxT: jax.Array) -> "SequenceEviction":
    del valid_BxT  # the segment ids already say which tokens are real
    return self

  def attend(self, layer, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, evict_logits_BxTxK=None):
    if evict_logits_BxTxK is None:
      raise ValueError("SequenceEviction: the model gave no decision logits (ModelConfig.dms is None)")
    rng = None if self.rng is None else jax.random.fold_in(self.rng, layer)
    bias_BxKxTxT, decisions_BxTxK = eviction_bias(evict_logits_BxTxK, self.cfg, mode=self.mode, rng=rng)
    mask_BxTxT = segment_causal_mask(self.segment_ids_BxT)
    out = grouped_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, mask_BxTxT, bias_BxKxTxT)
    return out, self.replace(decisions=self.decisions + (decisions_BxTxK,))

  def end_step(self) -> "SequenceEviction":
    return self


def forward(model, tokens_BxT: jax.Array, *, positions: jax.Array | None = None,
            segment_ids: jax.Array | None = None, mode: str = "hard",
            rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(logits [B,T,V], decisions [L,B,T,K]) of a DMS model over whole sequences with eviction on.

  hard: what the compressed cache computes, token for token; soft: the training relaxation (straight-through
  decisions, noisy with `rng`). Real tokens of a segment must be contiguous (distances are index differences).
  """
  if model.cfg.dms is None:
    raise ValueError("dms.forward: the model has no DMS settings (ModelConfig.dms is None)")
  if segment_ids is None:
    segment_ids = jnp.ones(tokens_BxT.shape, jnp.int32)
  eviction = SequenceEviction.create(model.cfg.dms, segment_ids, mode=mode, rng=rng)
  logits_BxTxV, eviction = model(tokens_BxT, positions=positions, segment_ids=segment_ids, cache=eviction)
  return logits_BxTxV, jnp.stack(eviction.decisions)
