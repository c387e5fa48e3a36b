"""Blockwise (flash) attention for the full-sequence forward: O(T) memory in the forward and in the backward.

Queries and keys are cut into N blocks of C tokens. Each query block runs an online softmax over the key blocks at
or below the causal diagonal: a `fori_loop` whose upper bound is the query block's index, so blocks above the
diagonal cost nothing (a masked scan would compute them all). The `custom_vjp` backward is FlashAttention-2's: it
recomputes the probabilities block by block from the saved output and log-sum-exp. No [T, T] array ever exists.

Letters: B batch, T tokens, H query heads, K KV heads, G = H / K query heads per KV head, D head dim, N blocks,
C tokens per block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxpost.models.masking import MASKED



def blockwise_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                        segment_ids_BxT: jax.Array, key_bias_BxTxK: jax.Array | None = None, *,
                        bias_window: int = 0, block_size: int = 512) -> jax.Array:
  """`sequence_attention` block by block. T is padded up to a multiple of the block (at most `block_size`): the
  padded keys come after every real query, so causality alone hides them."""
  b, t, h, d = q_BxTxHxD.shape
  kv_heads = k_BxTxKxD.shape[2]
  c = min(block_size, t)
  n = -(-t // c)
  blocks = functools.partial(_to_blocks, n=n, c=c)
  bias_NxBxKxC = None if key_bias_BxTxK is None else blocks(key_bias_BxTxK, token_axis=-1)
  out_NxBxKxGxCxD = _flash(blocks(q_BxTxHxD.reshape(b, t, kv_heads, h // kv_heads, d), token_axis=-2),
                           blocks(k_BxTxKxD, token_axis=-2), blocks(v_BxTxKxD, token_axis=-2),
                           blocks(segment_ids_BxT, token_axis=-1), bias_NxBxKxC, bias_window)
  out_BxNxCxKxGxD = jnp.moveaxis(jnp.moveaxis(out_NxBxKxGxCxD, -2, 2), 0, 1)
  return out_BxNxCxKxGxD.reshape(b, n * c, h, d)[:, :t]


def _to_blocks(x_BxTxR: jax.Array, *, n: int, c: int, token_axis: int) -> jax.Array:
  """[B, T, ...] -> [N, B, ..., C, ...]: T zero-padded to N * C and split into blocks, the block index leading (what
  the loops index) and the in-block token axis at `token_axis`."""
  pad = [(0, 0)] * x_BxTxR.ndim
  pad[1] = (0, n * c - x_BxTxR.shape[1])
  x_BxNxCxR = jnp.pad(x_BxTxR, pad).reshape(x_BxTxR.shape[0], n, c, *x_BxTxR.shape[2:])
  return jnp.moveaxis(jnp.moveaxis(x_BxNxCxR, 1, 0), 2, token_axis)


def _at(x_Nx: jax.Array | None, i: jax.Array) -> jax.Array | None:
  """Block `i` of a block-major array (None stays None: no bias)."""
  return None if x_Nx is None else lax.dynamic_index_in_dim(x_Nx, i, 0, keepdims=False)


def _block_scores(q_BxKxGxCxD, k_BxKxCxD, seg_q_BxC, seg_k_BxC, bias_BxKxC, offset, window):
  """(float32 scores [B,K,G,C,C] with invisible keys at MASKED, visible [B,1,1,C,C], far [C,C]) of one query
  block against one key block whose first token lies `offset` tokens before the query block's; `far` marks the
  entries beyond `window`, where the key bias applies. The same arithmetic as the reference, in the same order."""
  c, d = q_BxKxGxCxD.shape[-2:]
  scores_BxKxGxCxC = jnp.einsum("bkgqd,bksd->bkgqs", q_BxKxGxCxD, k_BxKxCxD,
                                preferred_element_type=jnp.float32) * (d ** -0.5)
  distance_CxC = offset + jnp.arange(c)[:, None] - jnp.arange(c)[None, :]
  far_CxC = distance_CxC > window
  if bias_BxKxC is not None:
    bias_BxKx1x1xC = bias_BxKxC[:, :, None, None].astype(jnp.float32)
    scores_BxKxGxCxC = scores_BxKxGxCxC + jnp.where(far_CxC, bias_BxKx1x1xC, 0.0)
  visible_BxCxC = (distance_CxC >= 0) & (seg_q_BxC[:, :, None] == seg_k_BxC[:, None, :])
  visible_Bx1x1xCxC = visible_BxCxC[:, None, None]
  return jnp.where(visible_Bx1x1xCxC, scores_BxKxGxCxC, MASKED), visible_Bx1x1xCxC, far_CxC


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q_NxBxKxGxCxD, k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC, bias_NxBxKxC, window):
  """Attention output [N, B, K, G, C, D] in v's dtype, on block-major inputs."""
  return _flash_forward(q_NxBxKxGxCxD, k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC, bias_NxBxKxC, window)[0]


def _flash_forward(q_NxBxKxGxCxD, k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC, bias_NxBxKxC, window):
  """(output [N,B,K,G,C,D], float32 log-sum-exp [N,B,K,G,C]): per query block i, an online softmax (running max,
  running sum, unnormalised float32 output) over key blocks 0..i."""
  n, c = q_NxBxKxGxCxD.shape[0], q_NxBxKxGxCxD.shape[-2]

  def query_block(_, xs):
    i, q_BxKxGxCxD, seg_q_BxC = xs

    def key_block(j, carry):
      max_BxKxGxC, sum_BxKxGxC, acc_BxKxGxCxD = carry
      scores, _, _ = _block_scores(q_BxKxGxCxD, _at(k_NxBxKxCxD, j), seg_q_BxC, _at(seg_NxBxC, j),
                                   _at(bias_NxBxKxC, j), (i - j) * c, window)
      new_max = jnp.maximum(max_BxKxGxC, scores.max(-1))
      probs_BxKxGxCxC = jnp.exp(scores - new_max[..., None])
      rescale = jnp.exp(max_BxKxGxC - new_max)
      pv_BxKxGxCxD = jnp.einsum("bkgqs,bksd->bkgqd", probs_BxKxGxCxC.astype(v_NxBxKxCxD.dtype),
                                _at(v_NxBxKxCxD, j), preferred_element_type=jnp.float32)
      return (new_max, sum_BxKxGxC * rescale + probs_BxKxGxCxC.sum(-1),
              acc_BxKxGxCxD * rescale[..., None] + pv_BxKxGxCxD)

    rows = q_BxKxGxCxD.shape[:-1]
    init = (jnp.full(rows, MASKED), jnp.zeros(rows), jnp.zeros(q_BxKxGxCxD.shape, jnp.float32))
    max_BxKxGxC, sum_BxKxGxC, acc_BxKxGxCxD = lax.fori_loop(0, i + 1, key_block, init)
    out_BxKxGxCxD = (acc_BxKxGxCxD / sum_BxKxGxC[..., None]).astype(v_NxBxKxCxD.dtype)
    return None, (out_BxKxGxCxD, max_BxKxGxC + jnp.log(sum_BxKxGxC))

  _, (out_NxBxKxGxCxD, lse_NxBxKxGxC) = lax.scan(query_block, None, (jnp.arange(n), q_NxBxKxGxCxD, seg_NxBxC))
  return out_NxBxKxGxCxD, lse_NxBxKxGxC


def _flash_fwd(q_NxBxKxGxCxD, k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC, bias_NxBxKxC, window):
  out_NxBxKxGxCxD, lse_NxBxKxGxC = _flash_forward(q_NxBxKxGxCxD, k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC,
                                                  bias_NxBxKxC, window)
  return out_NxBxKxGxCxD, (q_NxBxKxGxCxD, k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC, bias_NxBxKxC, out_NxBxKxGxCxD,
                           lse_NxBxKxGxC)


def _flash_bwd(window, residuals, dout_NxBxKxGxCxD):
  """FlashAttention-2's backward: per key block j, over query blocks j..N-1, P from the log-sum-exp, then
  dV += P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dK += dS^T Q, dQ += dS K (into a float32 buffer) and
  d(key bias) += dS summed over the queries beyond the window and the group's heads."""
  q_NxBxKxGxCxD, k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC, bias_NxBxKxC, out_NxBxKxGxCxD, lse_NxBxKxGxC = residuals
  n, c, d = q_NxBxKxGxCxD.shape[0], *q_NxBxKxGxCxD.shape[-2:]
  delta_NxBxKxGxC = jnp.sum(dout_NxBxKxGxCxD.astype(jnp.float32) * out_NxBxKxGxCxD.astype(jnp.float32), -1)

  def key_block(dq_NxBxKxGxCxD, xs):
    j, k_BxKxCxD, v_BxKxCxD, seg_k_BxC, bias_BxKxC = xs

    def query_block(i, carry):
      dq_NxBxKxGxCxD, dk_BxKxCxD, dv_BxKxCxD, dbias_BxKxC = carry
      q_BxKxGxCxD, dout_BxKxGxCxD = _at(q_NxBxKxGxCxD, i), _at(dout_NxBxKxGxCxD, i)
      scores, visible, far_CxC = _block_scores(q_BxKxGxCxD, k_BxKxCxD, _at(seg_NxBxC, i), seg_k_BxC, bias_BxKxC,
                                               (i - j) * c, window)
      probs = jnp.where(visible, jnp.exp(scores - _at(lse_NxBxKxGxC, i)[..., None]), 0.0)
      dprobs = jnp.einsum("bkgqd,bksd->bkgqs", dout_BxKxGxCxD, v_BxKxCxD, preferred_element_type=jnp.float32)
      dscores_BxKxGxCxC = probs * (dprobs - _at(delta_NxBxKxGxC, i)[..., None])
      dv_BxKxCxD += jnp.einsum("bkgqs,bkgqd->bksd", probs.astype(dout_BxKxGxCxD.dtype), dout_BxKxGxCxD,
                               preferred_element_type=jnp.float32)
      dk_BxKxCxD += jnp.einsum("bkgqs,bkgqd->bksd", dscores_BxKxGxCxC.astype(q_BxKxGxCxD.dtype), q_BxKxGxCxD,
                               preferred_element_type=jnp.float32) * (d ** -0.5)
      dq_BxKxGxCxD = jnp.einsum("bkgqs,bksd->bkgqd", dscores_BxKxGxCxC.astype(k_BxKxCxD.dtype), k_BxKxCxD,
                                preferred_element_type=jnp.float32) * (d ** -0.5)
      dq_NxBxKxGxCxD = lax.dynamic_update_index_in_dim(dq_NxBxKxGxCxD, _at(dq_NxBxKxGxCxD, i) + dq_BxKxGxCxD, i, 0)
      if dbias_BxKxC is not None:
        dbias_BxKxC += jnp.where(far_CxC, dscores_BxKxGxCxC, 0.0).sum((2, 3))
      return dq_NxBxKxGxCxD, dk_BxKxCxD, dv_BxKxCxD, dbias_BxKxC

    dkv_shape = k_BxKxCxD.shape
    init = (dq_NxBxKxGxCxD, jnp.zeros(dkv_shape), jnp.zeros(dkv_shape),
            None if bias_BxKxC is None else jnp.zeros(bias_BxKxC.shape))
    dq_NxBxKxGxCxD, dk_BxKxCxD, dv_BxKxCxD, dbias_BxKxC = lax.fori_loop(j, n, query_block, init)
    return dq_NxBxKxGxCxD, (dk_BxKxCxD, dv_BxKxCxD, dbias_BxKxC)

  xs = (jnp.arange(n), k_NxBxKxCxD, v_NxBxKxCxD, seg_NxBxC, bias_NxBxKxC)
  dq_NxBxKxGxCxD, (dk_NxBxKxCxD, dv_NxBxKxCxD, dbias_NxBxKxC) = lax.scan(
      key_block, jnp.zeros(q_NxBxKxGxCxD.shape), xs)
  dbias = None if bias_NxBxKxC is None else dbias_NxBxKxC.astype(bias_NxBxKxC.dtype)
  return (dq_NxBxKxGxCxD.astype(q_NxBxKxGxCxD.dtype), dk_NxBxKxCxD.astype(k_NxBxKxCxD.dtype),
          dv_NxBxKxCxD.astype(v_NxBxKxCxD.dtype), None, dbias)


_flash.defvjp(_flash_fwd, _flash_bwd)
