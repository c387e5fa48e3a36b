"""Quest (arXiv 2406.10774): query-aware page selection at decode. The full cache is kept; only reads are saved.

Cache columns are grouped in pages of `page_size`; each page keeps the element-wise min and max of its keys per KV
head. At a decode step, page p of KV head k gets the upper bound sum_g sum_d max(q_gd * min_pd, q_gd * max_pd) of
its attention scores, summed over the group's query heads (GQA-aware), and the query reads only the best
budget // page_size pages, the page holding the new token always among them. Prefill (and any multi-token step)
is dense, as in the paper. This implementation computes the decode attention as a masked dense product (same
result); the read counts are what a paged kernel would load. Budget unit: KV tokens read per decode step per (sequence, layer, KV head), in whole
pages; memory is not saved (`live_bytes` is the dense figure), `mean_tokens_read` is what is.

Letters: B batch, T new tokens, N cache columns (a whole number of pages), P pages, K KV heads, G query heads per
KV head, D head dim, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from jaxpost.models.attention import grouped_attention
from jaxpost.models.baseline_caches._common import check_positive, slot_bytes
from jaxpost.models.config import ModelConfig
from jaxpost.models.masking import MASKED


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quest:
  """Quest settings; an instance is the sampler's hashable `cache_factory`."""

  budget: int  # KV tokens read per decode step per (sequence, layer, KV head), rounded down to whole pages
  page_size: int = 16

  def __post_init__(self):
    check_positive("Quest", budget=self.budget, page_size=self.page_size)
    if self.budget < self.page_size:
      raise ValueError(f"Quest: budget ({self.budget}) must hold at least one page of {self.page_size} tokens")

  @property
  def pages_read(self) -> int:
    return self.budget // self.page_size

  def __call__(self, cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> "QuestKVCache":
    return QuestKVCache.create(cfg, batch_size, capacity, settings=self, dtype=dtype)


class QuestLayer(NamedTuple):
  keys: jax.Array  # [B, N, K, D], after RoPE
  values: jax.Array  # [B, N, K, D]
  page_min: jax.Array  # [B, P, K, D]: element-wise min of the page's valid keys (0 for an empty page)
  page_max: jax.Array  # [B, P, K, D]
  tokens_read: jax.Array  # [B, K] int32: KV tokens read by the decode steps so far
  tokens_visible: jax.Array  # [B, K] int32: what dense decoding would have read in the same steps


@flax.struct.dataclass
class QuestKVCache:
  """KVCache protocol with dense storage (column s holds the s-th token fed, as in `DenseKVCache`) and page bounds."""

  layers: tuple[QuestLayer, ...]
  valid_BxN: jax.Array
  end: jax.Array  # int32 scalar: columns written so far
  step_valid_BxT: jax.Array  # bool: the tokens registered by begin_step ([B, 1] between steps, shape-stable)
  decode_steps_B: jax.Array  # int32: decode steps with a real token
  settings: Quest = flax.struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, cfg: ModelConfig, batch_size: int, capacity: int, *, settings: Quest,
             dtype=None) -> "QuestKVCache":
    """`capacity` columns (prompt + completion, as for the dense cache), rounded up to whole pages."""
    check_positive("QuestKVCache.create", capacity=capacity)
    b, k, ps = batch_size, cfg.num_kv_heads, settings.page_size
    pages = -(-capacity // ps)
    dtype = dtype or cfg.compute_dtype
    zeros = jnp.zeros((b, pages * ps, k, cfg.head_dim), dtype)
    bounds = jnp.zeros((b, pages, k, cfg.head_dim), dtype)
    counts = jnp.zeros((b, k), jnp.int32)
    layer = QuestLayer(keys=zeros, values=zeros, page_min=bounds, page_max=bounds, tokens_read=counts,
                       tokens_visible=counts)
    return cls(layers=(layer,) * cfg.num_layers, valid_BxN=jnp.zeros((b, pages * ps), bool),
               end=jnp.zeros((), jnp.int32), step_valid_BxT=jnp.zeros((b, 1), bool),
               decode_steps_B=jnp.zeros((b,), jnp.int32), settings=settings)

  def begin_step(self, valid_BxT: jax.Array) -> "QuestKVCache":
    valid_BxN = jax.lax.dynamic_update_slice(self.valid_BxN, valid_BxT.astype(bool), (0, self.end))
    return self.replace(valid_BxN=valid_BxN, step_valid_BxT=valid_BxT.astype(bool))

  def attend(self, layer, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, evict_logits_BxTxK=None):
    del evict_logits_BxTxK  # training-free
    state, ps = self.layers[layer], self.settings.page_size
    t, n = q_BxTxHxD.shape[1], self.valid_BxN.shape[1]
    write = lambda store, new: jax.lax.dynamic_update_slice(store, new.astype(store.dtype), (0, self.end, 0, 0))
    keys, values = write(state.keys, k_BxTxKxD), write(state.values, v_BxTxKxD)
    causal_TxN = jnp.arange(n)[None, :] <= (self.end + jnp.arange(t))[:, None]
    mask_BxTxN = causal_TxN[None] & self.valid_BxN[:, None, :]
    if t > 1:  # prefill: dense attention, page bounds from scratch
      page_min, page_max = _page_bounds(keys, self.valid_BxN, ps)
      new = state._replace(keys=keys, values=values, page_min=page_min, page_max=page_max)
      return grouped_attention(q_BxTxHxD, keys, values, mask_BxTxN), self._set(layer, new)
    # Decode: only the page just written to changes (read it back, not the whole cache), then select pages.
    page = self.end // ps
    lo, hi = _page_bounds(jax.lax.dynamic_slice_in_dim(keys, page * ps, ps, axis=1),
                          jax.lax.dynamic_slice_in_dim(self.valid_BxN, page * ps, ps, axis=1), ps)
    put = lambda bounds, page_bounds: jax.lax.dynamic_update_slice(bounds, page_bounds, (0, page, 0, 0))
    page_min, page_max = put(state.page_min, lo), put(state.page_max, hi)
    filled_BxP = jnp.any(self.valid_BxN.reshape(-1, n // ps, ps), axis=2)
    chosen_BxKxP = select_pages(q_BxTxHxD[:, 0], page_min, page_max, filled_BxP, current_page=page,
                                pages_read=self.settings.pages_read)
    read_BxKxN = jnp.repeat(chosen_BxKxP, ps, axis=2) & mask_BxTxN
    out = grouped_attention(q_BxTxHxD, keys, values, mask_BxTxN, jnp.where(read_BxKxN, 0.0, MASKED)[:, :, None])
    count = lambda mask_BxKxN: jnp.where(self.step_valid_BxT, jnp.sum(mask_BxKxN, axis=2, dtype=jnp.int32), 0)
    new = QuestLayer(keys=keys, values=values, page_min=page_min, page_max=page_max,
                     tokens_read=state.tokens_read + count(read_BxKxN),
                     tokens_visible=state.tokens_visible + count(mask_BxTxN))
    return out, self._set(layer, new)

  def end_step(self) -> "QuestKVCache":
    t = self.step_valid_BxT.shape[1]
    decode_steps_B = self.decode_steps_B + (self.step_valid_BxT[:, 0] if t == 1 else 0)
    return self.replace(end=self.end + t, decode_steps_B=decode_steps_B,
                        step_valid_BxT=jnp.zeros((self.valid_BxN.shape[0], 1), bool))

  def read_first(self, columns: int) -> "QuestKVCache":
    return self  # its page bounds and selection span the whole capacity

  def _set(self, layer: int, state: QuestLayer) -> "QuestKVCache":
    return self.replace(layers=self.layers[:layer] + (state,) + self.layers[layer + 1:])

  def tokens_read(self) -> jax.Array:
    """[L, B, K] int32: KV tokens read by all decode steps (the page-selected reads)."""
    return jnp.stack([layer.tokens_read for layer in self.layers])

  def tokens_visible(self) -> jax.Array:
    """[L, B, K] int32: KV tokens dense decoding would have read in the same decode steps."""
    return jnp.stack([layer.tokens_visible for layer in self.layers])

  def mean_tokens_read(self) -> jax.Array:
    """[B]: KV tokens read per decode step, averaged over layers and KV heads."""
    return jnp.mean(self.tokens_read(), axis=(0, 2)) / jnp.maximum(self.decode_steps_B, 1)

  def live_bytes(self) -> jax.Array:
    """Bytes of keys and values held for valid tokens: all of them (Quest saves reads, not memory)."""
    per_token = slot_bytes(self.layers[0].keys) * self.layers[0].keys.shape[2] * len(self.layers)
    return jnp.sum(self.valid_BxN) * per_token


def select_pages(q_BxHxD: jax.Array, page_min_BxPxKxD: jax.Array, page_max_BxPxKxD: jax.Array,
                 filled_BxP: jax.Array, *, current_page: jax.Array, pages_read: int) -> jax.Array:
  """[B, K, P] bool: the pages a decode query reads, per KV head: `current_page` and the filled pages with the best
  upper bounds sum_g sum_d max(q_gd * min_pd, q_gd * max_pd), `pages_read` in all (ties: the lower page)."""
  b, h, d = q_BxHxD.shape
  k, pages = page_min_BxPxKxD.shape[2], page_min_BxPxKxD.shape[1]
  q_BxKxGx1xD = q_BxHxD.reshape(b, k, h // k, 1, d).astype(jnp.float32)
  lo_BxKx1xPxD, hi_BxKx1xPxD = (jnp.transpose(x, (0, 2, 1, 3))[:, :, None].astype(jnp.float32)
                                for x in (page_min_BxPxKxD, page_max_BxPxKxD))
  bound_BxKxP = jnp.sum(jnp.maximum(q_BxKxGx1xD * lo_BxKx1xPxD, q_BxKxGx1xD * hi_BxKx1xPxD), axis=(2, 4))
  priority_BxKxP = jnp.where(filled_BxP[:, None], bound_BxKxP, -jnp.inf)
  priority_BxKxP = jnp.where(jnp.arange(pages) == current_page, jnp.inf, priority_BxKxP)
  _, top_BxKxR = jax.lax.top_k(priority_BxKxP, min(pages_read, pages))
  return jnp.any(top_BxKxR[..., None] == jnp.arange(pages), axis=2)


def _page_bounds(keys_BxNxKxD: jax.Array, valid_BxN: jax.Array, page_size: int) -> tuple[jax.Array, jax.Array]:
  """Element-wise min and max of each page's valid keys, [B, P, K, D] each (0 where a page has no valid key)."""
  b, n, k, d = keys_BxNxKxD.shape
  keys = keys_BxNxKxD.reshape(b, n // page_size, page_size, k, d)
  valid = valid_BxN.reshape(b, n // page_size, page_size)[:, :, :, None, None]
  page_min = jnp.min(jnp.where(valid, keys, jnp.inf), axis=2)
  page_max = jnp.max(jnp.where(valid, keys, -jnp.inf), axis=2)
  filled = jnp.any(valid, axis=2)
  return jnp.where(filled, page_min, 0).astype(keys.dtype), jnp.where(filled, page_max, 0).astype(keys.dtype)
