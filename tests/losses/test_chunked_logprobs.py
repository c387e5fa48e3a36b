"""Log-probs computed a chunk of positions at a time equal the full [B, T, V] computation, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost.losses import logprobs, make_dms_loss
from tests.losses import fakes


def _model(chunk: int, **overrides):
  return jm.Decoder(jm.presets.get("tiny", num_layers=2, logits_chunk=chunk, **overrides), rngs=nnx.Rngs(0))


def _full_logits(model):
  """The same model as a plain callable, so the bindings take its whole [B, T, V] logits."""
  return lambda tokens, **kw: model(tokens, **kw)


def _value_and_grads(fn, model):
  graphdef, params = nnx.split(model, nnx.Param)
  return jax.jit(jax.value_and_grad(lambda p: fn(nnx.merge(graphdef, p))))(params)


def _assert_trees_close(got, want, tol=1e-5):
  """Gradients within `tol` of each leaf's scale: the chunks add the output projection's gradient up in another
  order than one product does (float32)."""
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=tol, atol=tol * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize("chunk", [3, 5, 64])  # several chunks with a ragged last one, and one chunk
def test_sft_arrays_in_chunks_equal_the_full_logits(chunk):
  batch = fakes.sft_packed(fakes.EXAMPLES, [[0, 1], [2]], width=11)
  model = _model(chunk)
  got = logprobs.sft_token_arrays(model, batch)
  want = logprobs.sft_token_arrays(_full_logits(model), batch)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
  weighted = lambda arrays: jnp.sum(arrays["logps"] * arrays["mask"]) + jnp.sum(arrays["entropy"] * arrays["mask"])
  got_v, got_g = _value_and_grads(lambda m: weighted(logprobs.sft_token_arrays(m, batch)), model)
  want_v, want_g = _value_and_grads(lambda m: weighted(logprobs.sft_token_arrays(_full_logits(m), batch)), model)
  np.testing.assert_allclose(got_v, want_v, rtol=1e-6)
  _assert_trees_close(got_g, want_g)


def test_completion_logps_read_only_completion_positions_in_chunks():
  batch = fakes.rl_batch()
  model = _model(3)
  got = logprobs.completion_logps(model, batch, temperature=0.7)
  want = logprobs.completion_logps(_full_logits(model), batch, temperature=0.7)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
  total = lambda m, full: jnp.sum(logprobs.completion_logps(_full_logits(m) if full else m, batch)[0]
                                  * batch["completion_mask"])
  got_v, got_g = _value_and_grads(lambda m: total(m, False), model)
  want_v, want_g = _value_and_grads(lambda m: total(m, True), model)
  np.testing.assert_allclose(got_v, want_v, rtol=1e-6)
  _assert_trees_close(got_g, want_g)


@pytest.mark.parametrize("teacher_in_batch", [False, True])
def test_dms_distillation_in_chunks_equals_one_chunk(teacher_in_batch):
  dms = jm.DMSConfig(variant="adapter", window=2)
  batch = fakes.sft_packed(fakes.EXAMPLES, [[0, 1], [2]], width=11)
  if teacher_in_batch:
    batch["teacher_logits"] = _model(64)(batch["tokens"] + 1, segment_ids=batch["segment_ids"])
  loss = lambda m: make_dms_loss()(m, batch, jax.random.key(3))[0]
  got_v, got_g = _value_and_grads(loss, _model(4, dms=dms))
  want_v, want_g = _value_and_grads(loss, _model(64, dms=dms))
  np.testing.assert_allclose(got_v, want_v, rtol=1e-6)
  _assert_trees_close(got_g, want_g)


def test_chunked_over_positions_pads_and_unpads():
  x_BxTxD = jnp.arange(2 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 3)
  fn = lambda x: {"sum": jnp.sum(x, axis=-1), "first": x[..., 0]}
  got = logprobs.chunked_over_positions(fn, x_BxTxD, chunk=3)
  for key, want in fn(x_BxTxD).items():
    np.testing.assert_array_equal(got[key], want)
