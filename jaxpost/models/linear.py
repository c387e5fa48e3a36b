"""A linear layer whose weight is stored [out, in], as torch and Hugging Face store it, and the products it uses.

Two choices serve decoding on CPU, where a step multiplies a few rows (one token per sequence) by every weight.
Each was kept because it raised decode tokens/s with both programs compiled side by side in one process (the
figures are in the commit messages; `benchmarks/generate.py` gives the end-to-end ratio):
- the weight goes on the left of the product, which needs it stored [out, in]. One row keeps the rows-left
  product, which XLA runs as a faster matrix-vector kernel.
- layers that read the same input run as one product over their stacked weights (`apply_all`: q/k/v, gate/up).
  XLA stacks the weights once, outside the decode loop.
Large products (training, prefill), and every product on other backends, are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FEW_ROWS = 64  # decode-sized products: at most this many rows (weight-left was faster at 8 and 32, equal at 64)


def _decode_sized(rows: int) -> bool:
  return rows <= FEW_ROWS and jax.default_backend() == "cpu"


def project(x_RxK: jax.Array, weight_NxK: jax.Array) -> jax.Array:
  """x @ weight.T over the last axis of `x` (any leading shape), with `weight` stored [out, in].

  For 2 to FEW_ROWS rows on CPU it computes (weight @ x.T).T; the optimization barrier stops XLA from rewriting
  that back into the rows-left product it canonicalises to.
  """
  lead, k = x_RxK.shape[:-1], x_RxK.shape[-1]
  rows_RxK = x_RxK.reshape(-1, k)
  if rows_RxK.shape[0] > 1 and _decode_sized(rows_RxK.shape[0]):
    out_RxN = jax.lax.optimization_barrier(weight_NxK @ rows_RxK.T).T
  else:
    out_RxN = rows_RxK @ weight_NxK.T
  return out_RxN.reshape(*lead, weight_NxK.shape[0])


class Linear(nnx.Module):
  """y = x @ weight.T (+ bias); `weight` [out, in] in `param_dtype`, the product in `dtype`."""

  def __init__(self, d_in: int, d_out: int, *, bias: bool = False, dtype, param_dtype, init, rngs: nnx.Rngs):
    # Drawn [in, out] and transposed, so a seed gives the same function as flax's nnx.Linear (the draws of
    # earlier versions of this library); the bias takes a key too, for the same reason.
    self.weight = nnx.Param(init(rngs.params(), (d_in, d_out), param_dtype).T)
    self.bias = nnx.Param(nnx.initializers.zeros_init()(rngs.params(), (d_out,), param_dtype)) if bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return _affine(x.astype(self.dtype), self.weight[...].astype(self.dtype), self._bias())

  def _bias(self) -> jax.Array | None:
    return None if self.bias is None else self.bias[...].astype(self.dtype)


def apply_all(layers: Sequence[Linear], x: jax.Array) -> tuple[jax.Array, ...]:
  """Each of `layers` (same input width and dtype, all with or all without bias) applied to `x`; decode-sized
  inputs on CPU go through one product over the stacked weights."""
  if not _decode_sized(x.size // x.shape[-1]):
    return tuple(layer(x) for layer in layers)
  dtype = layers[0].dtype
  weight = jnp.concatenate([layer.weight[...].astype(dtype) for layer in layers])
  biases = [layer._bias() for layer in layers]
  bias = None if biases[0] is None else jnp.concatenate(biases)
  out = _affine(x.astype(dtype), weight, bias)
  return tuple(jnp.split(out, np.cumsum([layer.weight.shape[0] for layer in layers])[:-1].tolist(), axis=-1))


def _affine(x: jax.Array, weight_NxK: jax.Array, bias_N: jax.Array | None) -> jax.Array:
  y = project(x, weight_NxK)
  return y if bias_N is None else y + bias_N
