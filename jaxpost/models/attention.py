"""Grouped-query attention math shared by the full forward and every KV cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASKED = -1e30  # finite, so a query that sees no key (padding) gives a uniform row, not NaN


def grouped_attention(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                      mask_BxTxS: jax.Array, bias_BxKxTxS: jax.Array | None = None) -> jax.Array:
  """Softmax attention where each group of H/K query heads shares one KV head.

  `mask_BxTxS` says which keys each query may see; `bias_BxKxTxS` (optional, e.g. DMS eviction) is added to the
  scores of every query head of a group.
  """
  b, t, h, d = q_BxTxHxD.shape
  k = k_BxSxKxD.shape[2]
  q_BxTxKxGxD = q_BxTxHxD.reshape(b, t, k, h // k, d)
  scores_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD,
                                preferred_element_type=jnp.float32) * (d ** -0.5)
  if bias_BxKxTxS is not None:
    scores_BxKxGxTxS = scores_BxKxGxTxS + bias_BxKxTxS[:, :, None].astype(jnp.float32)
  scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, _MASKED)
  probs = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(v_BxSxKxD.dtype)
  out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxD)
  return out_BxTxKxGxD.reshape(b, t, h, d)


def segment_causal_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """[B, T, T] mask: causal, and a query sees only keys of its own segment (0 marks padding)."""
  t = segment_ids_BxT.shape[1]
  causal_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))
  same_segment_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return causal_TxT[None] & same_segment_BxTxT
