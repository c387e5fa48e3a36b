"""Tiny stand-ins for the loss tests: a model whose logits depend only on the query's own segment, and batches."""

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


# Three examples: (prompt tokens, completion tokens).
EXAMPLES = [([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10]), ([2, 2], [3])]


def sft_unpacked(examples, width=8):
  """One example per row, right padded; loss_mask on completion tokens."""
  rows = {k: np.zeros((len(examples), width), np.int32) for k in ("tokens", "segment_ids", "positions", "loss_mask")}
  for b, (prompt, completion) in enumerate(examples):
    seq = prompt + completion
    rows["tokens"][b, :len(seq)] = seq
    rows["segment_ids"][b, :len(seq)] = 1
    rows["positions"][b, :len(seq)] = np.arange(len(seq))
    rows["loss_mask"][b, len(prompt):len(seq)] = 1
  return {k: jnp.asarray(v) for k, v in rows.items()}


def sft_packed(examples, rows_of_examples, width=11):
  """Examples concatenated into rows as listed, each with its own segment id and positions."""
  rows = {k: np.zeros((len(rows_of_examples), width), np.int32)
          for k in ("tokens", "segment_ids", "positions", "loss_mask")}
  for r, members in enumerate(rows_of_examples):
    start = 0
    for seg, i in enumerate(members, start=1):
      prompt, completion = examples[i]
      seq = prompt + completion
      sl = slice(start, start + len(seq))
      rows["tokens"][r, sl], rows["segment_ids"][r, sl] = seq, seg
      rows["positions"][r, sl] = np.arange(len(seq))
      rows["loss_mask"][r, start + len(prompt):start + len(seq)] = 1
      start += len(seq)
  return {k: jnp.asarray(v) for k, v in rows.items()}


def rl_batch(seed=0):
  """Four RL rows: left-padded prompts, right-padded completions (the last one empty), random advantages."""
  rng = np.random.default_rng(seed)
  p, c = 3, 4
  prompt_mask = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1]])
  completion_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
  return {
      "prompt_tokens": jnp.asarray(rng.integers(1, 11, (4, p)) * prompt_mask),
      "prompt_mask": jnp.asarray(prompt_mask),
      "completion_tokens": jnp.asarray(rng.integers(1, 11, (4, c)) * completion_mask),
      "completion_mask": jnp.asarray(completion_mask),
      "advantages": jnp.asarray(rng.normal(size=4), jnp.float32),
  }
