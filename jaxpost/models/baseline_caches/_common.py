"""Helpers shared by the training-free KV-cache baselines: attention that also returns its weights, token indices,
byte accounting.

Letters: B batch, T new tokens, S slots or cache columns, C candidates (held slots + new tokens), H query heads,
K KV heads, G = H / K query heads per KV head, D head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpost.models.masking import MASKED



def attention_with_probs(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                         mask_BxKxTxS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Grouped-query attention (the same operations as `grouped_attention`) with a mask per KV head, returning the
  output [B, T, H, D] and the float32 attention weights [B, K, G, T, S] that the eviction scores are built from."""
  b, t, h, d = q_BxTxHxD.shape
  k = k_BxSxKxD.shape[2]
  q_BxTxKxGxD = q_BxTxHxD.reshape(b, t, k, h // k, d)
  scores_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD,
                                preferred_element_type=jnp.float32) * (d ** -0.5)
  scores_BxKxGxTxS = jnp.where(mask_BxKxTxS[:, :, None], scores_BxKxGxTxS, MASKED)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1)
  out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS.astype(v_BxSxKxD.dtype), v_BxSxKxD)
  return out_BxTxKxGxD.reshape(b, t, h, d), probs_BxKxGxTxS


def token_indices(valid_BxT: jax.Array, seen_B: jax.Array) -> jax.Array:
  """[B, T] int32: index of each new token among its sequence's real tokens (its position), -1 for padding."""
  rank_BxT = jnp.cumsum(valid_BxT, axis=1, dtype=jnp.int32) - 1
  return jnp.where(valid_BxT, seen_B[:, None] + rank_BxT, -1)


def slot_bytes(keys_BxSxKxD: jax.Array) -> int:
  """Bytes of one token's key and value for one KV head of one layer."""
  return 2 * keys_BxSxKxD.shape[3] * keys_BxSxKxD.dtype.itemsize


def check_positive(owner: str, **values: int) -> None:
  """One-line ValueError naming the first field that is not a positive int."""
  for name, value in values.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
