"""`project`, `Linear` and `apply_all`: x @ weight.T in both orientations and stacked, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models.linear import FEW_ROWS, Linear, apply_all, project


@pytest.mark.parametrize("lead", [(1,), (2,), (2, 4), (FEW_ROWS,), (FEW_ROWS + 1,), (3, 50)])
def test_project_equals_numpy_in_both_orientations(lead):
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=lead + (24,)).astype(np.float32), rng.normal(size=(40, 24)).astype(np.float32)
  cotangent = rng.normal(size=lead + (40,)).astype(np.float32)
  out, pullback = jax.vjp(jax.jit(project), jnp.asarray(x), jnp.asarray(w))
  grad_x, grad_w = pullback(jnp.asarray(cotangent))
  np.testing.assert_allclose(out, x @ w.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad_x, cotangent @ w, rtol=1e-5, atol=1e-5)
  flat = lambda a: a.reshape(-1, a.shape[-1])
  np.testing.assert_allclose(grad_w, flat(cotangent).T @ flat(x), rtol=1e-4, atol=1e-4)


def test_few_rows_put_the_weight_on_the_left_of_the_compiled_dot():
  """The barrier keeps XLA from folding (weight @ x.T).T back into x @ weight.T: the dot's output is [N, rows]."""
  x, w = jnp.ones((8, 24)), jnp.ones((40, 24))
  hlo = jax.jit(project).lower(x, w).compile().as_text()
  assert "f32[40,8]" in hlo and "f32[8,40]{1,0} dot(" not in hlo
  wide = jax.jit(project).lower(jnp.ones((FEW_ROWS + 1, 24)), w).compile().as_text()
  assert f"f32[{FEW_ROWS + 1},40]" in wide and f"f32[40,{FEW_ROWS + 1}]" not in wide


def _layer(d_out, seed, bias=True):
  layer = Linear(24, d_out, bias=bias, dtype=jnp.float32, param_dtype=jnp.float32, init=nnx.initializers.normal(1.0),
                 rngs=nnx.Rngs(seed))
  if bias:
    layer.bias[...] = jnp.arange(d_out, dtype=jnp.float32) + seed
  return layer


def test_linear_stores_the_weight_out_by_in_and_adds_the_bias():
  layer = _layer(40, 0)
  assert layer.weight[...].shape == (40, 24)
  x = np.random.default_rng(1).normal(size=(5, 24)).astype(np.float32)
  np.testing.assert_allclose(layer(jnp.asarray(x)), x @ np.asarray(layer.weight[...]).T + np.arange(40), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 8, FEW_ROWS + 1])
def test_apply_all_equals_each_layer_and_stacks_decode_sized_inputs(bias, rows):
  layers = [_layer(d, seed, bias) for seed, d in enumerate((40, 16, 16))]
  x = jnp.asarray(np.random.default_rng(2).normal(size=(rows, 1, 24)).astype(np.float32))
  for got, layer in zip(apply_all(layers, x), layers, strict=True):
    np.testing.assert_allclose(got, layer(x), rtol=1e-5, atol=1e-5)
  graphdef, state = nnx.split(nnx.List(layers))  # weights as arguments, so XLA cannot fold their concatenation
  hlo = jax.jit(lambda state, x: apply_all(nnx.merge(graphdef, state), x)).lower(state, x).compile().as_text()
  stacked = "f32[72,24]" in hlo  # the three weights concatenated
  assert stacked == (rows <= FEW_ROWS), hlo
