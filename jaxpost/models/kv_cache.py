"""KV caches: the interface the decoder calls, and the dense static-shape cache.

A cache owns both the storage and the attention read, so compressed caches (DMS, eviction baselines, page
selection) plug into the decoder and the sampler without either changing. One model step calls
`begin_step` once, `attend` once per layer, then `end_step`.
"""

from __future__ import annotations

from typing import Protocol

import flax.struct
import jax
import jax.numpy as jnp

from jaxpost.models.attention import head_major_attention
from jaxpost.models.config import ModelConfig


class KVCache(Protocol):
  """What the decoder needs from a cache."""

  def begin_step(self, valid_BxT: jax.Array) -> "KVCache":
    """Registers T new tokens (valid marks real ones, False for padding)."""

  def attend(self, layer: int, q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
             evict_logits_BxTxK: jax.Array | None = None) -> tuple[jax.Array, "KVCache"]:
    """Stores the new keys/values of `layer` and returns the attention output of the new queries."""

  def end_step(self) -> "KVCache":
    """Moves past the tokens registered by `begin_step`."""

  def read_first(self, columns: int) -> "KVCache":
    """This cache attending over its first `columns` columns only (static), for a caller that knows the later
    ones are empty and stay so until its next call, like the sampler's decode segments. A cache may return itself
    (the compressed ones, whose slots are not in token order, do)."""


@flax.struct.dataclass
class DenseKVCache:
  """Every token keeps a slot: column s of the cache holds the s-th token fed to the model.

  Prompts may be left-padded; padding columns are never attended to. Capacity must cover prompt plus
  generated tokens (writes past the end would be clamped by XLA, so `begin_step` callers size it right).
  Keys and values are stored head-major (the layouts `head_major_attention` reads), so each decode step reads them
  without a transpose. They hold the first S <= capacity columns (all of them unless `read_first` says fewer),
  and attention reads what is held: the sampler grows S as columns fill, so early steps read less.
  """

  keys: tuple[jax.Array, ...]  # per layer [B, K, D, S]
  values: tuple[jax.Array, ...]  # per layer [B, K, S, D]
  valid_BxS: jax.Array
  end: jax.Array  # int32 scalar: columns written so far
  step_len: int = flax.struct.field(pytree_node=False, default=0)

  @classmethod
  def create(cls, cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> "DenseKVCache":
    dtype = dtype or cfg.compute_dtype
    zeros = lambda *shape: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    k, d = cfg.num_kv_heads, cfg.head_dim
    return cls(keys=zeros(batch_size, k, d, capacity), values=zeros(batch_size, k, capacity, d),
               valid_BxS=jnp.zeros((batch_size, capacity), bool), end=jnp.zeros((), jnp.int32))

  @property
  def capacity(self) -> int:
    return self.valid_BxS.shape[1]

  def begin_step(self, valid_BxT: jax.Array) -> "DenseKVCache":
    valid_BxS = jax.lax.dynamic_update_slice(self.valid_BxS, valid_BxT.astype(bool), (0, self.end))
    return self.replace(valid_BxS=valid_BxS, step_len=valid_BxT.shape[1])

  def attend(self, layer, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, evict_logits_BxTxK=None):
    del evict_logits_BxTxK  # a dense cache keeps everything
    write = lambda cache, new, axes, at: jax.lax.dynamic_update_slice(
        cache, jnp.transpose(new, axes).astype(cache.dtype), at)
    keys = write(self.keys[layer], k_BxTxKxD, (0, 2, 3, 1), (0, 0, 0, self.end))
    values = write(self.values[layer], v_BxTxKxD, (0, 2, 1, 3), (0, 0, self.end, 0))
    t, s = q_BxTxHxD.shape[1], keys.shape[3]
    query_col_T = self.end + jnp.arange(t)
    causal_TxS = jnp.arange(s)[None, :] <= query_col_T[:, None]
    mask_BxTxS = causal_TxS[None] & self.valid_BxS[:, None, :s]
    out = head_major_attention(q_BxTxHxD, keys, values, mask_BxTxS)
    new = self.replace(keys=_set(self.keys, layer, keys), values=_set(self.values, layer, values))
    return out, new

  def end_step(self) -> "DenseKVCache":
    return self.replace(end=self.end + self.step_len, step_len=0)  # same static structure after every step

  def read_first(self, columns: int) -> "DenseKVCache":
    """Holds the first `columns` columns (at most capacity): cut, or padded with empty ones."""
    resize = lambda x, axis: _resize(x, axis, min(columns, self.capacity))
    return self.replace(keys=tuple(resize(k, 3) for k in self.keys), values=tuple(resize(v, 2) for v in self.values))

  def live_bytes(self) -> jax.Array:
    """Bytes of keys and values held for valid tokens."""
    per_token = 2 * sum(k.shape[1] * k.shape[2] * k.dtype.itemsize for k in self.keys)  # K * D, keys and values
    return jnp.sum(self.valid_BxS) * per_token


def _resize(x: jax.Array, axis: int, size: int) -> jax.Array:
  if x.shape[axis] >= size:
    return jax.lax.slice_in_dim(x, 0, size, axis=axis)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def _set(items: tuple, index: int, value) -> tuple:
  return items[:index] + (value,) + items[index + 1:]
