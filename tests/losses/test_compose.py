"""A composed loss: value and gradient are the weighted sums of the terms'; metrics are prefixed per term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import Term, compose, make_grpo_loss, make_sft_loss
from tests.losses import fakes


def test_gradient_of_composed_loss_is_weighted_sum_of_term_gradients():
  params = fakes.init_params(11)
  batch = dict(fakes.rl_batch(2), demo=fakes.sft_unpacked(fakes.EXAMPLES))
  grpo_fn, sft_fn = make_grpo_loss(), make_sft_loss()
  composed = compose({"grpo": (1.0, grpo_fn), "sft": Term(weight=0.1, loss_fn=sft_fn, batch_key="demo")})

  def value_and_grad(fn, b):
    return jax.jit(jax.value_and_grad(lambda p: fn(fakes.bind(p), b, jax.random.key(0)), has_aux=True))(params)

  (total, metrics), grad = value_and_grad(composed, batch)
  (g_loss, g_metrics), g_grad = value_and_grad(grpo_fn, batch)
  (s_loss, s_metrics), s_grad = value_and_grad(sft_fn, batch["demo"])
  np.testing.assert_allclose(total, g_loss + 0.1 * s_loss, rtol=1e-6)
  jax.tree.map(lambda c, a, b: np.testing.assert_allclose(c, a + 0.1 * b, rtol=1e-5, atol=1e-7), grad, g_grad, s_grad)
  assert float(metrics["loss"]) == pytest.approx(float(total))
  for key, value in g_metrics.items():
    np.testing.assert_allclose(metrics[f"grpo/{key}"], value, rtol=1e-6)
  for key, value in s_metrics.items():
    np.testing.assert_allclose(metrics[f"sft/{key}"], value, rtol=1e-6)
  assert set(metrics) == {"loss"} | {f"grpo/{k}" for k in g_metrics} | {f"sft/{k}" for k in s_metrics}


def test_terms_get_distinct_deterministic_rngs():
  noise = lambda model, batch, rng: (jax.random.normal(rng), {})
  composed = compose({"a": (1.0, noise), "b": (1.0, noise)})
  _, m1 = composed(None, {}, jax.random.key(3))
  _, m2 = composed(None, {}, jax.random.key(3))
  assert float(m1["a/loss"]) != float(m1["b/loss"])
  assert float(m1["a/loss"]) == float(m2["a/loss"])
  assert float(compose({"a": (2.0, lambda m, b, r: (jnp.float32(1.5), {}))})(None, {}, None)[0]) == 3.0


@pytest.mark.parametrize("terms,match", [({}, "at least one"), ({"a/b": (1.0, make_sft_loss())}, "no '/'"),
                                         ({"a": (1.0,)}, "weight, loss_fn"),
                                         ({"a": (float("nan"), make_sft_loss())}, "finite")])
def test_bad_terms_raise(terms, match):
  with pytest.raises(ValueError, match=match):
    compose(terms)
