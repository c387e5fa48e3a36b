"""`project` and `Linear`: x @ weight.T in both orientations, values and gradients against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models.linear import WEIGHT_LEFT_ROWS, Linear, project


@pytest.mark.parametrize("lead", [(1,), (WEIGHT_LEFT_ROWS[0],), (2, 4), (WEIGHT_LEFT_ROWS[1],),
                                  (WEIGHT_LEFT_ROWS[1] + 1,), (3, 50)])
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
  wide = jax.jit(project).lower(jnp.ones((WEIGHT_LEFT_ROWS[1] + 1, 24)), w).compile().as_text()
  assert f"f32[{WEIGHT_LEFT_ROWS[1] + 1},40]" in wide and f"f32[40,{WEIGHT_LEFT_ROWS[1] + 1}]" not in wide


def test_linear_stores_the_weight_out_by_in_and_adds_the_bias():
  layer = Linear(24, 40, bias=True, dtype=jnp.float32, param_dtype=jnp.float32,
                 init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))
  layer.bias[...] = jnp.arange(40, dtype=jnp.float32)
  assert layer.weight[...].shape == (40, 24)
  x = np.random.default_rng(1).normal(size=(5, 24)).astype(np.float32)
  np.testing.assert_allclose(layer(jnp.asarray(x)), x @ np.asarray(layer.weight[...]).T + np.arange(40), rtol=1e-5,
                             atol=1e-5)
