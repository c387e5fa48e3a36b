"""Counts fixed once per batch: micro-batched, composed and mini-batched losses equal their whole-batch values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import losses
from jaxpost.train import accumulate_gradients
from jaxpost.train.rl import with_generation_token_count
from tests.train.helpers import tiny_model

ROWS, PROMPT, COMPLETION, SEQ = 8, 4, 6, 10


def _rl_batch(seed=0):
  """Eight RL rows with different prompt and completion lengths (two completions empty) and random advantages."""
  rng = np.random.default_rng(seed)
  prompt_lens, completion_lens = rng.integers(1, PROMPT + 1, ROWS), np.array([6, 1, 3, 0, 5, 2, 0, 4])
  prompt_mask = (np.arange(PROMPT)[None] >= PROMPT - prompt_lens[:, None]).astype(np.int32)
  completion_mask = (np.arange(COMPLETION)[None] < completion_lens[:, None]).astype(np.int32)
  return {"prompt_tokens": rng.integers(1, 64, (ROWS, PROMPT)) * prompt_mask, "prompt_mask": prompt_mask,
          "completion_tokens": rng.integers(1, 64, (ROWS, COMPLETION)) * completion_mask,
          "completion_mask": completion_mask, "advantages": rng.normal(size=ROWS).astype(np.float32)}


def _sft_batch(seed=1):
  rng = np.random.default_rng(seed)
  loss_mask = (rng.random((ROWS, SEQ)) < np.linspace(0.1, 0.9, ROWS)[:, None]).astype(np.int32)
  return {"tokens": rng.integers(1, 64, (ROWS, SEQ)), "loss_mask": loss_mask,
          "segment_ids": np.ones((ROWS, SEQ), np.int32)}


def _loss_and_grads(loss_fn, batch, num_microbatches):
  graphdef, params = nnx.split(tiny_model())
  batch = jax.tree.map(jnp.asarray, batch)
  return accumulate_gradients(params, batch, jax.random.key(0), graphdef=graphdef, loss_fn=loss_fn,
                              num_microbatches=num_microbatches)


def _assert_same(one, four):
  (loss_1, metrics_1, grads_1), (loss_4, metrics_4, grads_4) = one, four
  np.testing.assert_allclose(loss_4, loss_1, rtol=1e-6, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_4, grads_1)
  return metrics_1, metrics_4


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_rl_update_with_4_microbatches_equals_1(loss_type):
  batch = with_generation_token_count(_rl_batch())
  loss_fn = losses.make_grpo_loss(losses.GRPOConfig(loss_type=loss_type, entropy_coef=0.01))
  metrics_1, metrics_4 = _assert_same(_loss_and_grads(loss_fn, batch, 1), _loss_and_grads(loss_fn, batch, 4))
  np.testing.assert_allclose(metrics_4["entropy"], metrics_1["entropy"], rtol=1e-6)


def test_a_composed_loss_with_different_token_counts_is_exact_under_microbatching():
  batch = {**_rl_batch(), "demo": _sft_batch()}
  assert _rl_batch()["completion_mask"].sum() != _sft_batch()["loss_mask"].sum()
  loss_fn = losses.compose({"grpo": (1.0, losses.make_grpo_loss(losses.GRPOConfig(loss_type="bnpo"))),
                            "sft": losses.Term(weight=0.5, loss_fn=losses.make_sft_loss(), batch_key="demo")})
  metrics_1, metrics_4 = _assert_same(_loss_and_grads(loss_fn, batch, 1), _loss_and_grads(loss_fn, batch, 4))
  for key in ("grpo/loss", "sft/loss", "sft/accuracy"):
    np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-6, atol=1e-7)
  # and the whole-batch value is the weighted sum of the two token means
  graphdef, params = nnx.split(tiny_model())
  direct = (losses.make_grpo_loss(losses.GRPOConfig(loss_type="bnpo"))(nnx.merge(graphdef, params),
                                                                       jax.tree.map(jnp.asarray, _rl_batch()))[0]
            + 0.5 * losses.make_sft_loss()(nnx.merge(graphdef, params), jax.tree.map(jnp.asarray, _sft_batch()))[0])
  np.testing.assert_allclose(metrics_1["loss"], direct, rtol=1e-6)


def test_dapo_minibatches_normalise_by_the_generation_batch_tokens():
  batch = with_generation_token_count(_rl_batch())
  total_tokens = batch["completion_mask"].sum()
  model = nnx.merge(*nnx.split(tiny_model()))
  loss_fn = losses.make_grpo_loss(losses.GRPOConfig(loss_type="dapo"))
  for rows in np.split(np.random.default_rng(0).permutation(ROWS), 4):
    minibatch = {k: jnp.asarray(v[rows]) for k, v in batch.items()}
    loss, _ = loss_fn(model, minibatch)
    # First update on fresh rollouts: ratio 1, so each token's loss is -A of its row.
    direct = -(batch["advantages"][rows][:, None] * batch["completion_mask"][rows]).sum() / total_tokens
    np.testing.assert_allclose(loss, direct, rtol=1e-6, atol=1e-8)
