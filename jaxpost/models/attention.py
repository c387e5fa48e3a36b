"""Grouped-query attention math shared by the full forward and every KV cache, and the full-sequence entry point
`sequence_attention`, which picks a kernel: this einsum (the reference), blockwise, splash (TPU) or cuDNN (GPU).

Letters: B batch, T queries, S keys, H query heads, K KV heads, G = H / K, D head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpost.models.flash_attention import blockwise_attention
from jaxpost.models.masking import MASKED
from jaxpost.models.platform_attention import cudnn_attention, splash_attention

ATTENTION_IMPLEMENTATIONS = ("auto", "reference", "blockwise", "splash", "cudnn")


def sequence_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                       segment_ids_BxT: jax.Array | None, *, key_bias_BxTxK: jax.Array | None = None,
                       bias_window: int = 0, implementation: str = "auto", block_size: int = 512,
                       mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """[B, T, H, D]: attention over whole sequences (training, evaluation), causal within the segments of
  `segment_ids_BxT` (0 = padding; None = one segment per row), through the kernel `implementation` names.

  `key_bias_BxTxK[b, s, k]` is added to the scores of key s for every query more than `bias_window` tokens after
  it (the O(T) form of the DMS eviction bias). `block_size` is the blockwise and splash block; `mesh` is where
  splash runs (see `splash_attention`). Every kernel computes what "reference" does, with float32 scores
  and softmax, up to rounding.
  """
  has_bias = key_bias_BxTxK is not None
  name = resolve_attention(implementation, seq_len=q_BxTxHxD.shape[1], block_size=block_size, has_bias=has_bias,
                           platform=jax.default_backend())
  if has_bias and name in ("splash", "cudnn"):
    raise ValueError(f"sequence_attention: {name!r} takes no key_bias; use 'blockwise' (or 'reference')")
  if name == "cudnn":
    return cudnn_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)
  if segment_ids_BxT is None:
    segment_ids_BxT = jnp.ones(q_BxTxHxD.shape[:2], jnp.int32)
  if name == "reference":
    bias_BxKxTxS = None if not has_bias else dense_key_bias(key_bias_BxTxK, bias_window)
    return grouped_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_causal_mask(segment_ids_BxT), bias_BxKxTxS)
  if name == "blockwise":
    return blockwise_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT, key_bias_BxTxK,
                               bias_window=bias_window, block_size=block_size)
  return splash_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT, block_size=block_size, mesh=mesh)


def resolve_attention(implementation: str, *, seq_len: int, block_size: int, has_bias: bool, platform: str) -> str:
  """The kernel "auto" stands for (any other valid name is itself): on TPU splash, or blockwise when there is a
  key bias (splash takes none); on GPU blockwise (cuDNN has no segment masks); on CPU the reference up to one
  block, where it is exact and fastest, blockwise beyond."""
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
  if implementation != "auto":
    return implementation
  if platform == "tpu":
    return "blockwise" if has_bias else "splash"
  if platform == "gpu":
    return "blockwise"
  return "reference" if seq_len <= block_size else "blockwise"


def dense_key_bias(key_bias_BxTxK: jax.Array, window: int) -> jax.Array:
  """[B, K, T, S] bias of `grouped_attention` from the per-key form: key s's bias for queries more than `window`
  tokens after it, 0 elsewhere (O(T^2): the reference only)."""
  t = key_bias_BxTxK.shape[1]
  index = jnp.arange(t)
  far_TxS = index[:, None] - index[None, :] > window
  return jnp.where(far_TxS, jnp.swapaxes(key_bias_BxTxK, 1, 2)[:, :, None, :], 0.0)


def grouped_attention(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                      mask_BxTxS: jax.Array, bias_BxKxTxS: jax.Array | None = None) -> jax.Array:
  """Softmax attention where each group of H/K query heads shares one KV head.

  `mask_BxTxS` says which keys each query may see; `bias_BxKxTxS` (optional, e.g. DMS eviction) is added to the
  scores of every query head of a group.
  """
  return head_major_attention(q_BxTxHxD, jnp.transpose(k_BxSxKxD, (0, 2, 3, 1)), jnp.swapaxes(v_BxSxKxD, 1, 2),
                              mask_BxTxS, bias_BxKxTxS)


def head_major_attention(q_BxTxHxD: jax.Array, k_BxKxDxS: jax.Array, v_BxKxSxD: jax.Array,
                         mask_BxTxS: jax.Array, bias_BxKxTxS: jax.Array | None = None) -> jax.Array:
  """`grouped_attention` with keys and values stored head-major, the layouts a KV cache keeps: keys [B, K, D, S]
  and values [B, K, S, D]. Both products then read the cache in place, with no transpose of it at a decode step,
  and each reduces over a non-minor axis of the cache (D for the scores, S for the output), which the CPU
  vectorises along the contiguous one."""
  b, t, h, d = q_BxTxHxD.shape
  k = k_BxKxDxS.shape[1]
  if t == 1:
    return _one_query_attention(q_BxTxHxD, k_BxKxDxS, v_BxKxSxD, mask_BxTxS, bias_BxKxTxS)
  q_BxKxGxTxD = jnp.transpose(q_BxTxHxD.reshape(b, t, k, h // k, d), (0, 2, 3, 1, 4))
  scores_BxKxGxTxS = jnp.einsum("bkgtd,bkds->bkgts", q_BxKxGxTxD, k_BxKxDxS,
                                preferred_element_type=jnp.float32) * (d ** -0.5)
  if bias_BxKxTxS is not None:
    scores_BxKxGxTxS = scores_BxKxGxTxS + bias_BxKxTxS[:, :, None].astype(jnp.float32)
  scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, MASKED)
  probs = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(v_BxKxSxD.dtype)
  out_BxKxGxTxD = jnp.einsum("bkgts,bksd->bkgtd", probs, v_BxKxSxD)
  return jnp.transpose(out_BxKxGxTxD, (0, 3, 1, 2, 4)).reshape(b, t, h, d)


def _one_query_attention(q_Bx1xHxD, k_BxKxDxS, v_BxKxSxD, mask_Bx1xS, bias_BxKx1xS=None) -> jax.Array:
  """The decode step (one query per row) as multiply-and-reduce: XLA fuses it into loops that stream the cache
  once, where a batched matmul of B*K tiny [G, D] x [D, S] products runs far below the machine's speed on CPU
  (batch 32: 1.25x decode tokens/s end to end)."""
  b, _, h, d = q_Bx1xHxD.shape
  k = k_BxKxDxS.shape[1]
  q_BxKxGxDx1 = q_Bx1xHxD.reshape(b, k, h // k, d, 1).astype(jnp.float32)
  scores_BxKxGxS = jnp.sum(q_BxKxGxDx1 * k_BxKxDxS[:, :, None].astype(jnp.float32), axis=-2) * (d ** -0.5)
  if bias_BxKx1xS is not None:
    scores_BxKxGxS = scores_BxKxGxS + bias_BxKx1xS.astype(jnp.float32)
  scores_BxKxGxS = jnp.where(mask_Bx1xS[:, None], scores_BxKxGxS, MASKED)
  probs_BxKxGxS = jax.nn.softmax(scores_BxKxGxS, axis=-1).astype(v_BxKxSxD.dtype)
  out_BxKxGxD = jnp.sum(probs_BxKxGxS[..., None] * v_BxKxSxD[:, :, None], axis=-2)
  return out_BxKxGxD.reshape(b, 1, h, d)


def segment_causal_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """[B, T, T] mask: causal, and a query sees only keys of its own segment (0 marks padding)."""
  t = segment_ids_BxT.shape[1]
  causal_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))
  same_segment_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return causal_TxT[None] & same_segment_BxTxT
