"""Log-probs, entropies, masked reductions and the SFT / RL model bindings vs independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxpost.losses import logprobs
from tests.losses import fakes


def test_token_logps_and_entropy_match_torch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(3, 5))
  got_logps = logprobs.token_logps(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets))
  assert got_logps.dtype == jnp.float32
  t_logits = torch.tensor(np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32)))
  want = torch.log_softmax(t_logits, -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
  np.testing.assert_allclose(got_logps, want.numpy(), atol=1e-5)
  got_ent = logprobs.token_entropy(jnp.asarray(logits))
  want_ent = torch.distributions.Categorical(logits=torch.tensor(logits)).entropy()
  np.testing.assert_allclose(got_ent, want_ent.numpy(), atol=1e-5)


def test_masked_reductions():
  x = jnp.array([[1.0, jnp.nan, 3.0], [4.0, 5.0, jnp.inf]])
  mask = jnp.array([[1, 0, 1], [0, 0, 0]])
  assert float(logprobs.masked_sum(x, mask)) == 4.0
  np.testing.assert_array_equal(logprobs.masked_mean(x, mask, axis=-1), [2.0, 0.0])
  np.testing.assert_array_equal(logprobs.masked_count(mask, axis=-1), [2.0, 0.0])


def _sft_batch():
  # Row 0: two packed segments then padding; row 1: one segment filling the row.
  tokens = np.array([[3, 4, 5, 6, 7, 8, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])
  segs = np.array([[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  pos = np.array([[0, 1, 2, 0, 1, 2, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]])
  loss_mask = np.array([[0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]])
  return {k: jnp.asarray(v) for k, v in
          dict(tokens=tokens, segment_ids=segs, positions=pos, loss_mask=loss_mask).items()}


def test_sft_token_arrays_shift_and_mask():
  params = fakes.init_params()
  batch = _sft_batch()
  arrays = jax.jit(lambda p, b: logprobs.sft_token_arrays(fakes.bind(p), b))(params, batch)
  logits = np.asarray(fakes.fake_model(params, batch["tokens"], positions=batch["positions"],
                                       segment_ids=batch["segment_ids"]))
  tokens, segs, lm = (np.asarray(batch[k]) for k in ("tokens", "segment_ids", "loss_mask"))
  for b in range(2):
    for t in range(8):
      want_mask = t > 0 and lm[b, t] == 1 and segs[b, t] == segs[b, t - 1] and segs[b, t] != 0
      assert bool(arrays["mask"][b, t]) == want_mask, (b, t)
      if t == 0:
        continue
      row = torch.tensor(logits[b, t - 1])
      np.testing.assert_allclose(arrays["logps"][b, t], torch.log_softmax(row, -1)[tokens[b, t]].item(), atol=1e-5)
      assert bool(arrays["correct"][b, t]) == (int(row.argmax()) == tokens[b, t])
  # Packed-boundary token (row 0, t=3, first of segment 2) and pad tokens carry no loss.
  assert not arrays["mask"][0, 3] and not arrays["mask"][0, 6]


def test_completion_logps_match_unpadded_per_row_forward():
  params = fakes.init_params(1)
  rng = np.random.default_rng(1)
  prompt_lens, completion_lens, p, c = [3, 1, 4], [2, 5, 0], 4, 5
  batch = {k: np.zeros((3, n), np.int32) for k, n in
           [("prompt_tokens", p), ("prompt_mask", p), ("completion_tokens", c), ("completion_mask", c)]}
  for b, (pl, cl) in enumerate(zip(prompt_lens, completion_lens)):
    batch["prompt_tokens"][b, p - pl:] = rng.integers(1, 11, pl)  # left padded
    batch["prompt_mask"][b, p - pl:] = 1
    batch["completion_tokens"][b, :cl] = rng.integers(1, 11, cl)  # right padded
    batch["completion_mask"][b, :cl] = 1
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  run = jax.jit(lambda params, batch: logprobs.completion_logps(fakes.bind(params), batch, temperature=0.7))
  logps, entropy = run(params, batch)
  assert logps.shape == entropy.shape == (3, c)
  for b, (pl, cl) in enumerate(zip(prompt_lens, completion_lens)):
    seq = np.concatenate([np.asarray(batch["prompt_tokens"][b, p - pl:]), np.asarray(batch["completion_tokens"][b, :cl])])
    logits = torch.tensor(np.asarray(fakes.fake_model(params, jnp.asarray(seq)[None])[0])) / 0.7
    for i in range(cl):
      dist = torch.log_softmax(logits[pl + i - 1], -1)
      np.testing.assert_allclose(logps[b, i], dist[seq[pl + i]].item(), atol=1e-5)
      np.testing.assert_allclose(entropy[b, i], -(dist.exp() * dist).sum().item(), atol=1e-5)
