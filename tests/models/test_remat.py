"""Layer remat changes memory, never numbers: every policy gives the loss and gradients of no remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost.generate import SamplingConfig, generate
from jaxpost.losses import make_dms_loss, make_sft_loss


def _batch(vocab: int, b: int = 2, t: int = 12):
  rng = np.random.default_rng(0)
  segs = np.array([[1] * 7 + [2] * 5, [0] * 3 + [1] * 9])  # packed row; left-padded row
  positions = np.array([list(range(7)) + list(range(5)), [0] * 3 + list(range(9))])
  return {"tokens": jnp.asarray(rng.integers(1, vocab, (b, t))), "segment_ids": jnp.asarray(segs),
          "positions": jnp.asarray(positions), "loss_mask": jnp.asarray((segs != 0).astype(np.int32))}


def _loss_and_grads(cfg: jm.ModelConfig, loss_fn, batch):
  graphdef, params = nnx.split(jm.Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  value = lambda p: loss_fn(nnx.merge(graphdef, p), batch, jax.random.key(1))[0]
  return jax.jit(jax.value_and_grad(value))(params)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_gives_the_loss_and_gradients_of_no_remat(policy):
  cfg = jm.presets.get("tiny", num_layers=2, remat="none")
  batch = _batch(cfg.vocab_size)
  want_loss, want_grads = _loss_and_grads(cfg, make_sft_loss(), batch)
  got_loss, got_grads = _loss_and_grads(cfg.replace(remat=policy), make_sft_loss(), batch)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_remat_of_the_dms_training_forward_keeps_loss_and_gradients():
  cfg = jm.presets.get("tiny", num_layers=2, remat="none", dms=jm.DMSConfig(variant="adapter", window=2))
  batch = _batch(cfg.vocab_size)
  want_loss, want_grads = _loss_and_grads(cfg, make_dms_loss(), batch)
  got_loss, got_grads = _loss_and_grads(cfg.replace(remat="full"), make_dms_loss(), batch)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_full_remat_recomputes_the_layers_in_the_backward_pass():
  """The remat policy reaches the compiled program: with `full`, the backward runs the layers' matmuls again."""
  cfg = jm.presets.get("tiny", num_layers=2, remat="none")
  batch = _batch(cfg.vocab_size)
  _, params = nnx.split(jm.Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)

  def flops(c):
    gd = nnx.graphdef(jm.Decoder(c, rngs=nnx.Rngs(0)))
    value = lambda p: make_sft_loss()(nnx.merge(gd, p), batch, None)[0]
    return jax.jit(jax.grad(value)).lower(params).compile().cost_analysis()["flops"]

  assert flops(cfg.replace(remat="full")) > 1.2 * flops(cfg)


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="remat 'some' is not one of"):
    jm.presets.get("tiny", remat="some")


def test_the_sampler_runs_a_remat_model_and_draws_the_same_tokens():
  """The sampler's jitted loops hold the model as a pytree; remat must work there (it is on by default on TPU)."""
  prompts = jnp.asarray(np.random.default_rng(1).integers(1, 100, (2, 5)))
  draw = lambda remat: generate(jm.Decoder(jm.presets.get("tiny", num_layers=2, remat=remat), rngs=nnx.Rngs(0)),
                                prompts, jnp.ones_like(prompts), cfg=SamplingConfig(temperature=0.0, completion_len=6))
  np.testing.assert_array_equal(draw("full").completion_tokens, draw("none").completion_tokens)
