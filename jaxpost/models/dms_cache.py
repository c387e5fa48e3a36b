"""The DMS-compressed KV cache: per (sequence, KV head) slots that evicted tokens give back (SPEC §5).

Each (sequence, KV head) has its own live length: slots [0, n_live) hold live tokens (keys after RoPE). A ring of
the last window + 1 tokens keeps each one's slot and eviction flag (the decision of the token after it, a > 0).
One token at a time (decode): when token t arrives, the flag of t - 1 is set; if the token leaving the window,
t - window - 1, is flagged, t overwrites its slot, else t takes a new slot. Several tokens at once (prefill or a
chunk): they are appended, attend with the delayed-eviction mask, then flagged tokens outside the window of the
last one are compacted away. Either way memory is the live slots, not the sequence length.

Letters: B batch, T new tokens, S slots (capacity), K KV heads, D head dim, R = window + 1 ring entries.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from jaxpost.models.attention import grouped_attention
from jaxpost.models.config import ModelConfig
from jaxpost.models.masking import MASKED


class DMSLayerCache(NamedTuple):
  """One layer's storage; the leading B axis is the sequence."""

  keys: jax.Array  # [B, S, K, D]
  values: jax.Array  # [B, S, K, D]
  token: jax.Array  # [B, S, K] int32: index (among the sequence's real tokens) of the token in the slot, -1 free
  n_live: jax.Array  # [B, K] int32
  ring_slot: jax.Array  # [B, R, K] int32: slot of token i at entry i % R, for the last R tokens
  ring_flag: jax.Array  # [B, R, K] bool: token i is to be evicted once it leaves the window


# Axis of K in one layer's storage once B is mapped away: the inner (per KV head) vmap maps over it.
_STATE_AXES = DMSLayerCache(keys=1, values=1, token=1, n_live=0, ring_slot=1, ring_flag=1)


@flax.struct.dataclass
class DMSKVCache:
  """KVCache protocol (`begin_step`, `attend`, `end_step`) with DMS eviction; build with `create`."""

  layers: tuple[DMSLayerCache, ...]
  seen_B: jax.Array  # int32: real tokens fed before this step
  step_valid_BxT: jax.Array  # bool: the tokens registered by begin_step ([B, 1] between steps, shape-stable)
  overflow_B: jax.Array  # bool, sticky: a token found no free slot (outputs are then wrong; size capacity up)
  window: int = flax.struct.field(pytree_node=False, default=0)

  @classmethod
  def create(cls, cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> "DMSKVCache":
    """Empty cache of `capacity` slots per (sequence, KV head); the window comes from `cfg.dms`.

    A step of T tokens needs live + T <= capacity before its compaction (size prefill chunks accordingly).
    """
    if cfg.dms is None:
      raise ValueError("DMSKVCache.create: the model config has no dms settings (ModelConfig.dms is None)")
    if capacity < 1:
      raise ValueError(f"DMSKVCache.create: capacity must be >= 1, got {capacity}")
    b, k, r = batch_size, cfg.num_kv_heads, cfg.dms.window + 1
    dtype = dtype or cfg.compute_dtype
    zeros = jnp.zeros((b, capacity, k, cfg.head_dim), dtype)
    layer = DMSLayerCache(keys=zeros, values=zeros, token=jnp.full((b, capacity, k), -1, jnp.int32),
                          n_live=jnp.zeros((b, k), jnp.int32), ring_slot=jnp.zeros((b, r, k), jnp.int32),
                          ring_flag=jnp.zeros((b, r, k), bool))
    return cls(layers=(layer,) * cfg.num_layers, seen_B=jnp.zeros((b,), jnp.int32),
               step_valid_BxT=jnp.zeros((b, 1), bool), overflow_B=jnp.zeros((b,), bool), window=cfg.dms.window)

  @property
  def capacity(self) -> int:
    return self.layers[0].keys.shape[1]

  def begin_step(self, valid_BxT: jax.Array) -> "DMSKVCache":
    return self.replace(step_valid_BxT=valid_BxT.astype(bool))

  def attend(self, layer, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, evict_logits_BxTxK=None):
    if evict_logits_BxTxK is None:  # a model without DMS: nothing is ever evicted
      evict_logits_BxTxK = jnp.zeros(k_BxTxKxD.shape[:3], jnp.float32)
    state = self.layers[layer]
    k_new, v_new = k_BxTxKxD.astype(state.keys.dtype), v_BxTxKxD.astype(state.values.dtype)
    evict_BxTxK, valid_BxT = evict_logits_BxTxK > 0, self.step_valid_BxT
    if q_BxTxHxD.shape[1] == 1:
      state, visible_BxKxTxS, overflow_BxK = _per_head(_decode_one, self.window, (_STATE_AXES, 0, 0))(
          state, k_new, v_new, evict_BxTxK, valid_BxT, self.seen_B)
    else:
      state, flag_BxKxS, visible_BxKxTxS, overflow_BxK = _per_head(_append, self.window, (_STATE_AXES, 0, 0, 0))(
          state, k_new, v_new, evict_BxTxK, valid_BxT, self.seen_B)
    bias_BxKxTxS = jnp.where(visible_BxKxTxS, 0.0, MASKED)
    out = grouped_attention(q_BxTxHxD, state.keys, state.values, jnp.any(visible_BxKxTxS, axis=1), bias_BxKxTxS)
    if q_BxTxHxD.shape[1] > 1:  # the new queries have attended: drop what the last one no longer sees
      last_B = self.seen_B + jnp.sum(valid_BxT, axis=1, dtype=jnp.int32) - 1
      state = _per_head(_compact, self.window, _STATE_AXES, in_axes=(_STATE_AXES, 0, None))(state, flag_BxKxS, last_B)
    layers = self.layers[:layer] + (state,) + self.layers[layer + 1:]
    return out, self.replace(layers=layers, overflow_B=self.overflow_B | jnp.any(overflow_BxK, axis=1))

  def end_step(self) -> "DMSKVCache":
    seen_B = self.seen_B + jnp.sum(self.step_valid_BxT, axis=1, dtype=jnp.int32)
    return self.replace(seen_B=seen_B, step_valid_BxT=jnp.zeros((self.seen_B.shape[0], 1), bool))

  def read_first(self, columns: int) -> "DMSKVCache":
    return self  # slots are not in token order

  def live_tokens(self) -> jax.Array:
    """[L, B, K] int32: tokens held per (layer, sequence, KV head)."""
    return jnp.stack([layer.n_live for layer in self.layers])

  def live_bytes(self) -> jax.Array:
    """Bytes of keys and values held for live tokens."""
    return jnp.sum(self.live_tokens()) * _slot_bytes(self.layers[0].keys)

  def allocated_bytes(self) -> int:
    """Bytes of key and value storage allocated (capacity slots for every layer, sequence and KV head)."""
    return sum(2 * layer.keys.size * layer.keys.dtype.itemsize for layer in self.layers)

  def compression(self) -> jax.Array:
    """[B]: tokens seen per live slot, averaged over layers and KV heads (1 = nothing evicted)."""
    live_B = jnp.mean(self.live_tokens(), axis=(0, 2))
    return self.seen_B / jnp.maximum(live_B, 1)


def _slot_bytes(keys_BxSxKxD: jax.Array) -> int:
  """Bytes of one token's key and value for one KV head."""
  return 2 * keys_BxSxKxD.shape[3] * keys_BxSxKxD.dtype.itemsize


def capacity_for_budget(cfg: ModelConfig, batch_size: int, budget_bytes: int, dtype=None) -> int:
  """Slots per (sequence, KV head) whose keys and values fit in `budget_bytes` over all layers and sequences."""
  itemsize = jnp.dtype(dtype or cfg.compute_dtype).itemsize
  per_slot = batch_size * cfg.num_layers * cfg.num_kv_heads * 2 * cfg.head_dim * itemsize
  capacity = budget_bytes // per_slot
  if capacity < 1:
    raise ValueError(f"capacity_for_budget: {budget_bytes} bytes hold no slot ({per_slot} bytes per slot)")
  return int(capacity)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DMSCacheFactory:
  """A hashable `cache_factory(model_cfg, batch_size, capacity)` for the sampler. The requested capacity (the dense
  length, prompt + completion) is capped by each bound given: `budget_bytes` of KV memory over all layers and rows;
  `budget_tokens` slots per (row, KV head); `compression`, the model's target compression ratio, as
  ceil(length / compression) + window + `margin` slots. With a cap below the prompt length, feed the prompt in
  chunks (`SamplingConfig.prefill_chunk` <= margin): a row that still runs out is marked in `Rollout.overflow`."""

  budget_bytes: int | None = None
  budget_tokens: int | None = None
  compression: float | None = None
  margin: int = 16

  def __post_init__(self):
    if self.budget_tokens is not None and self.budget_tokens < 1:
      raise ValueError(f"DMSCacheFactory.budget_tokens must be >= 1, got {self.budget_tokens}")
    if self.compression is not None and self.compression < 1:
      raise ValueError(f"DMSCacheFactory.compression must be >= 1, got {self.compression}")
    if self.margin < 0:
      raise ValueError(f"DMSCacheFactory.margin must be >= 0, got {self.margin}")

  def capacity(self, cfg: ModelConfig, batch_size: int, length: int, dtype=None) -> int:
    """Slots per (row, KV head) for sequences of `length` tokens under the bounds given."""
    bounds = [length]
    if self.budget_bytes is not None:
      bounds.append(capacity_for_budget(cfg, batch_size, self.budget_bytes, dtype))
    if self.budget_tokens is not None:
      bounds.append(self.budget_tokens)
    if self.compression is not None:
      bounds.append(math.ceil(length / self.compression) + (cfg.dms.window if cfg.dms else 0) + self.margin)
    return min(bounds)

  def __call__(self, cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> DMSKVCache:
    return DMSKVCache.create(cfg, batch_size, self.capacity(cfg, batch_size, capacity, dtype), dtype)


# ------------------------------------------------------------------------------------------ one (sequence, KV head)


def _decode_one(h: DMSLayerCache, k_TxD, v_TxD, evict_T, valid_T, seen, *, window: int):
  """T = 1: the new token reuses the slot of the flagged token leaving the window, else takes a new slot."""
  s, r = h.keys.shape[0], window + 1
  valid, index = valid_T[0], seen
  prev = (index - 1) % r
  ring_flag = h.ring_flag.at[prev].set(jnp.where(valid & (index >= 1), evict_T[0], h.ring_flag[prev]))
  entry = index % r  # also the entry of index - r, the token leaving the window
  reuse = valid & (index >= r) & ring_flag[entry]
  slot = jnp.where(reuse, h.ring_slot[entry], h.n_live)
  target = jnp.where(valid, slot, s)  # s: out of bounds, the write is dropped
  new = DMSLayerCache(
      keys=h.keys.at[target].set(k_TxD[0], mode="drop"),
      values=h.values.at[target].set(v_TxD[0], mode="drop"),
      token=h.token.at[target].set(index, mode="drop"),
      n_live=jnp.minimum(h.n_live + (valid & ~reuse), s),
      ring_slot=h.ring_slot.at[entry].set(jnp.where(valid, slot, h.ring_slot[entry])),
      ring_flag=ring_flag.at[entry].set(ring_flag[entry] & ~valid))
  visible_1xS = (jnp.arange(s) < new.n_live)[None]
  return new, visible_1xS, valid & (slot >= s)


def _append(h: DMSLayerCache, k_TxD, v_TxD, evict_T, valid_T, seen, *, window: int):
  """T > 1: append the valid tokens; (state, per-slot eviction flags, the delayed-eviction mask, overflow)."""
  s, r, t = h.keys.shape[0], window + 1, valid_T.shape[0]
  rank_T = jnp.cumsum(valid_T) - 1  # order among this step's valid tokens
  n_new = jnp.sum(valid_T, dtype=jnp.int32)
  index_T = seen + rank_T
  # Decision of the token of rank i (slot t + 1 stays False: the last token's successor has not come yet).
  evict_by_rank = jnp.zeros((t + 1,), bool).at[jnp.where(valid_T, rank_T, t + 1)].set(evict_T, mode="drop")
  prev = (seen - 1) % r
  ring_flag = h.ring_flag.at[prev].set(jnp.where((n_new > 0) & (seen >= 1), evict_by_rank[0], h.ring_flag[prev]))
  slot_T = jnp.where(valid_T, h.n_live + rank_T, s)
  n_total = h.n_live + n_new
  new = h._replace(keys=h.keys.at[slot_T].set(k_TxD, mode="drop"),
                   values=h.values.at[slot_T].set(v_TxD, mode="drop"),
                   token=h.token.at[slot_T].set(index_T, mode="drop"),
                   n_live=jnp.minimum(n_total, s), ring_flag=ring_flag)
  # Per-slot flags: old tokens still in the ring, then the new ones (flagged by their successor's decision).
  ring_index_R = seen - 1 - (seen - 1 - jnp.arange(r)) % r
  flag_S = jnp.zeros((s,), bool).at[jnp.where(ring_index_R >= 0, h.ring_slot, s)].set(ring_flag, mode="drop")
  flag_S = flag_S.at[slot_T].set(evict_by_rank[rank_T + 1], mode="drop")
  distance_TxS = index_T[:, None] - new.token[None, :]
  live_S = jnp.arange(s) < new.n_live
  visible_TxS = live_S & (distance_TxS >= 0) & ~(flag_S & (distance_TxS > window))
  return new, flag_S, visible_TxS, n_total > s


def _compact(h: DMSLayerCache, flag_S, last, *, window: int) -> DMSLayerCache:
  """Removes flagged tokens outside the window of token `last` (keeping slot order) and rebuilds the ring."""
  s, r = h.keys.shape[0], window + 1
  keep_S = (jnp.arange(s) < h.n_live) & ~(flag_S & (last - h.token > window))
  new_slot_S = jnp.where(keep_S, jnp.cumsum(keep_S) - 1, s)
  entry_S = jnp.where(keep_S & (last - h.token <= window), h.token % r, r)
  return DMSLayerCache(
      keys=jnp.zeros_like(h.keys).at[new_slot_S].set(h.keys, mode="drop"),
      values=jnp.zeros_like(h.values).at[new_slot_S].set(h.values, mode="drop"),
      token=jnp.full_like(h.token, -1).at[new_slot_S].set(h.token, mode="drop"),
      n_live=jnp.sum(keep_S, dtype=jnp.int32),
      ring_slot=h.ring_slot.at[entry_S].set(new_slot_S, mode="drop"),
      ring_flag=jnp.zeros_like(h.ring_flag).at[entry_S].set(flag_S, mode="drop"))


def _per_head(fn, window: int, out_axes, in_axes=(_STATE_AXES, 1, 1, 1, None, None)):
  """`fn` on one (sequence, KV head), mapped over B (axis 0 of everything) then K (where each layout keeps it)."""
  inner = jax.vmap(functools.partial(fn, window=window), in_axes=in_axes, out_axes=out_axes)
  return jax.vmap(inner)
