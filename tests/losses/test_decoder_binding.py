"""The model bindings with the real (tiny) `jaxpost.models.Decoder`: packing invariance of the SFT loss and
gradient, and RL completion log-probs equal to a per-row forward over the unpadded sequence."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxpost.models as jm
from jaxpost.losses import GRPOConfig, completion_logps, make_grpo_loss, make_sft_loss
from tests.losses import fakes


def _tiny_decoder(seed=0):
  cfg = jm.ModelConfig(vocab_size=16, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                       intermediate_size=64, qk_norm=True)
  return jm.Decoder(cfg, rngs=nnx.Rngs(seed))


def _value_and_grad_fn(model, loss_fn):
  """(params, jitted (params, batch) -> (loss, grads)) for a pure loss over the model's parameters."""
  graphdef, params = nnx.split(model, nnx.Param)

  def f(params, batch):
    return loss_fn(nnx.merge(graphdef, params), batch, None)[0]

  return params, jax.jit(jax.value_and_grad(f))


def test_sft_packed_equals_unpacked_with_decoder():
  model = _tiny_decoder(1)
  params, grad_fn = _value_and_grad_fn(model, make_sft_loss())
  # Same [3, 11] shape both ways (one compile); the packed batch's third row is all padding.
  loss_u, grad_u = grad_fn(params, fakes.sft_unpacked(fakes.EXAMPLES, width=11))
  loss_p, grad_p = grad_fn(params, fakes.sft_packed(fakes.EXAMPLES, [[0, 1], [2], []]))
  np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_p, grad_u)


def test_completion_logps_with_decoder_match_unpadded_forward():
  model = _tiny_decoder(2)
  batch = fakes.rl_batch(3)
  logps, _ = jax.jit(lambda b: completion_logps(model, b))(batch)
  # Reference: each row's real tokens moved to the front (positions 0.., no padding before them) and run with
  # the default arange positions; trailing filler cannot affect earlier positions of a causal model.
  seqs, prompt_lens = np.zeros((4, 7), np.int32), []
  for b in range(4):
    prompt = np.asarray(batch["prompt_tokens"][b])[np.asarray(batch["prompt_mask"][b]) == 1]
    completion = np.asarray(batch["completion_tokens"][b])[np.asarray(batch["completion_mask"][b]) == 1]
    seqs[b, :len(prompt) + len(completion)] = np.concatenate([prompt, completion])
    prompt_lens.append(len(prompt))
  logp_all = jax.nn.log_softmax(jax.jit(lambda t: model(t))(jnp.asarray(seqs)), axis=-1)
  for b in range(4):
    for i in range(int(batch["completion_mask"][b].sum())):
      pos = prompt_lens[b] + i
      np.testing.assert_allclose(logps[b, i], logp_all[b, pos - 1, seqs[b, pos]], atol=1e-5)


def test_grpo_loss_trains_a_decoder():
  """One gradient step on the GRPO loss raises the log-prob of a positive-advantage completion."""
  model = _tiny_decoder(4)
  batch = fakes.rl_batch(5)
  batch["advantages"] = jnp.array([1.0, -1.0, 0.5, 0.0])
  loss_fn = make_grpo_loss(GRPOConfig(loss_type="dr_grpo"))
  params, grad_fn = _value_and_grad_fn(model, loss_fn)
  _, grads = grad_fn(params, batch)
  graphdef, _ = nnx.split(model, nnx.Param)
  logps_fn = jax.jit(lambda params: completion_logps(nnx.merge(graphdef, params), batch)[0])
  before = logps_fn(params)
  after = logps_fn(jax.tree.map(lambda p, g: p - 0.5 * g, params, grads))
  mask = np.asarray(batch["completion_mask"]) == 1
  assert np.sum((after - before)[0][mask[0]]) > 0
  assert np.sum((after - before)[1][mask[1]]) < 0
