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

from jaxpost.models.attention import dense_key_bias, sequence_attention
from jaxpost.models.masking import MASKED

DMS_VARIANTS = ("query_neuron", "adapter")
DMS_MODES = ("soft", "hard")  # training relaxation | inference decisions (a > 0)


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
  return dense_key_bias(successor_bias(log_keep_BxTxK), window)


def log_keep(a_BxTxK: jax.Array, cfg: DMSConfig, *, mode: str,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(log-probability that each token is kept [B,T,K], decisions [B,T,K]) of one layer in the full forward.

  soft: log sigmoid(-l) of the noisy relaxation, straight-through decisions (for the compression loss).
  hard: no noise, 0 or MASKED: evicted keys beyond the window are masked out, exactly what the compressed cache
  attends to.
  """
  if mode == "soft":
    l_BxTxK, decisions_BxTxK = relaxed_decisions(a_BxTxK, cfg, rng)
    return jax.nn.log_sigmoid(-l_BxTxK), decisions_BxTxK
  evict_BxTxK = a_BxTxK > 0
  return jnp.where(evict_BxTxK, MASKED, 0.0), evict_BxTxK.astype(jnp.float32)


def successor_bias(log_keep_BxTxK: jax.Array) -> jax.Array:
  """[B, T, K]: key k's bias beyond the window, the log-keep of its successor k + 1 (the decision at token k + 1
  says whether k is evicted); the last key has none, and no query lies beyond the window from it."""
  return jnp.pad(log_keep_BxTxK[:, 1:], ((0, 0), (0, 1), (0, 0)))


def eviction_bias(a_BxTxK: jax.Array, cfg: DMSConfig, *, mode: str,
                  rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(attention bias [B,K,T,T], decisions [B,T,K]) of one layer: `log_keep` in the dense form that
  `grouped_attention` takes (O(T^2); the full forward uses the per-key form)."""
  log_keep_BxTxK, decisions_BxTxK = log_keep(a_BxTxK, cfg, mode=mode, rng=rng)
  return delayed_eviction_bias(log_keep_BxTxK, cfg.window), decisions_BxTxK


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
  attention: str = flax.struct.field(pytree_node=False, default="auto")  # ModelConfig.attention
  attention_block: int = flax.struct.field(pytree_node=False, default=512)

  @classmethod
  def create(cls, cfg: DMSConfig, segment_ids_BxT: jax.Array, *, mode: str = "hard",
             rng: jax.Array | None = None, attention: str = "auto",
             attention_block: int = 512) -> "SequenceEviction":
    """mode "soft" (noisy when `rng` is given) for training, "hard" for the inference decisions a > 0;
    `attention` / `attention_block`: the kernel, as `ModelConfig` names it."""
    if mode not in DMS_MODES:
      raise ValueError(f"SequenceEviction: mode {mode!r} is not one of {DMS_MODES}")
    return cls(segment_ids_BxT=segment_ids_BxT, rng=rng, cfg=cfg, mode=mode, attention=attention,
               attention_block=attention_block)

  def begin_step(self, valid_BxT: jax.Array) -> "SequenceEviction":
    del valid_BxT  # the segment ids already say which tokens are real
    return self

  def attend(self, layer, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, evict_logits_BxTxK=None):
    if evict_logits_BxTxK is None:
      raise ValueError("SequenceEviction: the model gave no decision logits (ModelConfig.dms is None)")
    rng = None if self.rng is None else jax.random.fold_in(self.rng, layer)
    log_keep_BxTxK, decisions_BxTxK = log_keep(evict_logits_BxTxK, self.cfg, mode=self.mode, rng=rng)
    out = sequence_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, self.segment_ids_BxT,
                             key_bias_BxTxK=successor_bias(log_keep_BxTxK), bias_window=self.cfg.window,
                             implementation=self.attention, block_size=self.attention_block)
    return out, self.replace(decisions=self.decisions + (decisions_BxTxK,))

  def end_step(self) -> "SequenceEviction":
    return self


def hidden_states(model, tokens_BxT: jax.Array, *, positions: jax.Array | None = None,
                  segment_ids: jax.Array | None = None, mode: str = "hard",
                  rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(final hidden states [B,T,D], decisions [L,B,T,K]) of a DMS model over whole sequences with eviction on;
  `forward` is this followed by the output projection. Losses project the positions a chunk at a time.

  hard: what the compressed cache computes, token for token; soft: the training relaxation (straight-through
  decisions, noisy with `rng`). Real tokens of a segment must be contiguous (distances are index differences).
  """
  cfg = model.cfg
  if cfg.dms is None:
    raise ValueError("dms.forward: the model has no DMS settings (ModelConfig.dms is None)")
  if segment_ids is None:
    segment_ids = jnp.ones(tokens_BxT.shape, jnp.int32)
  eviction = SequenceEviction.create(cfg.dms, segment_ids, mode=mode, rng=rng, attention=cfg.attention,
                                     attention_block=cfg.attention_block)
  hidden_BxTxD, eviction = model.hidden_states(tokens_BxT, positions=positions, segment_ids=segment_ids,
                                               cache=eviction)
  return hidden_BxTxD, jnp.stack(eviction.decisions)


def forward(model, tokens_BxT: jax.Array, *, positions: jax.Array | None = None,
            segment_ids: jax.Array | None = None, mode: str = "hard",
            rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(logits [B,T,V], decisions [L,B,T,K]) of a DMS model over whole sequences with eviction on (see
  `hidden_states`)."""
  hidden_BxTxD, decisions_LxBxTxK = hidden_states(model, tokens_BxT, positions=positions, segment_ids=segment_ids,
                                                  mode=mode, rng=rng)
  return model.unembed(hidden_BxTxD), decisions_LxBxTxK
