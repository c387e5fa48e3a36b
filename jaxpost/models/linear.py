"""A linear layer whose weight is stored [out, in], as torch and Hugging Face store it, and the product it uses.

The layout serves decoding: a step multiplies a handful of rows (one token per sequence) by every weight, and on
CPU that product runs faster with the weight as the left operand, which needs it stored [out, in] (batch 8: about
1.15-1.2x decode tokens/s on a 2-core CPU against the rows-left product, the two compiled side by side in one
process). One row keeps the rows-left product, which XLA turns into a matrix-vector kernel that is faster still;
so do large products (training, prefill).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

WEIGHT_LEFT_ROWS = (2, 64)  # row counts (inclusive) that put the weight on the left: faster at 8 and 32, equal at 64


def project(x_RxK: jax.Array, weight_NxK: jax.Array) -> jax.Array:
  """x @ weight.T over the last axis of `x` (any leading shape), with `weight` stored [out, in].

  For a few rows it computes (weight @ x.T).T; the optimization barrier stops XLA from rewriting that back into
  the rows-left product it canonicalises to.
  """
  lead, k = x_RxK.shape[:-1], x_RxK.shape[-1]
  rows_RxK = x_RxK.reshape(-1, k)
  low, high = WEIGHT_LEFT_ROWS
  if low <= rows_RxK.shape[0] <= high:
    out_RxN = jax.lax.optimization_barrier(weight_NxK @ rows_RxK.T).T
  else:
    out_RxN = rows_RxK @ weight_NxK.T
  return out_RxN.reshape(*lead, weight_NxK.shape[0])


class Linear(nnx.Module):
  """y = x @ weight.T (+ bias); `weight` [out, in] in `param_dtype`, the product in `dtype`."""

  def __init__(self, d_in: int, d_out: int, *, bias: bool = False, dtype, param_dtype, init,
               rngs: nnx.Rngs):
    # Drawn [in, out] and transposed, so a seed gives the same function as flax's nnx.Linear (the draws of
    # earlier versions of this library); the bias takes a key too, for the same reason.
    self.weight = nnx.Param(init(rngs.params(), (d_in, d_out), param_dtype).T)
    self.bias = nnx.Param(nnx.initializers.zeros_init()(rngs.params(), (d_out,), param_dtype)) if bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = project(x.astype(self.dtype), self.weight[...].astype(self.dtype))
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)
