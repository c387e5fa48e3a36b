"""Tiny stand-in models for the loss tests: logits depend only on the tokens of the query's own segment."""

import jax
import jax.numpy as jnp
import numpy as np


def init_params(seed: int = 0, *, vocab: int = 11, dim: int = 8, max_pos: int = 32) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {
      "embed": jnp.asarray(rng.normal(size=(vocab, dim)), jnp.float32),
      "pos": jnp.asarray(rng.normal(size=(max_pos, dim)) * 0.5, jnp.float32),
      "out": jnp.asarray(rng.normal(size=(dim, vocab)), jnp.float32),
  }


def fake_model(params, tokens_BxT, *, positions=None, segment_ids=None):
  """Causal mean of the embeddings of earlier tokens of the same segment, plus a position embedding."""
  b, t = tokens_BxT.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  idx = jnp.arange(t)
  same_BxTxT = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (idx[:, None] >= idx[None, :])
  same_BxTxT &= (segment_ids[:, :, None] != 0) | (idx[:, None] == idx[None, :])
  weights_BxTxT = same_BxTxT / jnp.sum(same_BxTxT, axis=-1, keepdims=True)
  h_BxTxD = jnp.einsum("bts,bsd->btd", weights_BxTxT, params["embed"][tokens_BxT]) + params["pos"][positions]
  return jnp.tanh(h_BxTxD) @ params["out"]


def bind(params):
  """The model-call signature the losses expect, closed over (possibly traced) params."""
  return lambda tokens, **kw: fake_model(params, tokens, **kw)
