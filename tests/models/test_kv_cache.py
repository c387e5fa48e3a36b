"""The KV-cache path (prefill, then one token at a time) against the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm


def _model(**overrides):
  cfg = jm.ModelConfig(vocab_size=61, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                       intermediate_size=64, qk_norm=True, **overrides)
  return jm.Decoder(cfg, rngs=nnx.Rngs(0))


def _decode_all(model, prompt, prompt_mask, continuation, *, hold=lambda cache, columns: cache):
  """Prefill the (left-padded) prompt, then feed `continuation` one token at a time; logits of every step.
  `hold(cache, columns)` runs before each step, with the columns filled once the step is done."""
  b, p = prompt.shape
  cache = hold(jm.DenseKVCache.create(model.cfg, b, p + continuation.shape[1]), p)
  positions = np.maximum(np.cumsum(prompt_mask, axis=1) - 1, 0)
  step = nnx.jit(lambda m, t, pos, seg, c: m(t, positions=pos, segment_ids=seg, cache=c))
  logits, cache = step(model, prompt, positions, prompt_mask, cache)
  outs = [logits]
  next_pos = prompt_mask.sum(1)
  for i in range(continuation.shape[1]):
    logits, cache = step(model, continuation[:, i:i + 1], (next_pos + i)[:, None], np.ones((b, 1), np.int32),
                         hold(cache, p + i + 1))
    outs.append(logits)
  return jnp.concatenate(outs, axis=1), cache


def test_decoding_32_tokens_matches_full_forward_with_left_padding():
  model = _model()
  rng = np.random.RandomState(0)
  prompt_lengths = np.array([9, 4, 1])
  p, n_new = 9, 32
  prompt_mask = (np.arange(p)[None] >= p - prompt_lengths[:, None]).astype(np.int32)
  prompt = rng.randint(1, 61, (3, p)) * prompt_mask
  continuation = rng.randint(1, 61, (3, n_new))
  cached, cache = _decode_all(model, prompt, prompt_mask, continuation)
  assert int(cache.end) == p + n_new
  for row, length in enumerate(prompt_lengths):  # each row alone, unpadded, through the full forward
    sequence = np.concatenate([prompt[row, p - length:], continuation[row]])[None]
    full = np.asarray(model(sequence))[0]
    np.testing.assert_allclose(np.asarray(cached)[row, p - length:], full, atol=1e-5, rtol=0)


def test_holding_only_the_columns_filled_so_far_changes_no_logit():
  """`read_first` as the sampler uses it: the prompt's columns for the prefill, then room grown 3 columns at a time."""
  model = _model()
  prompt_mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
  prompt, continuation = np.random.RandomState(2).randint(1, 61, (2, 5)) * prompt_mask, np.full((2, 7), 3)
  held = []
  def grow(cache, columns):
    cache = cache.read_first(-(-columns // 3) * 3 if columns > 5 else columns)
    held.append(cache.keys[0].shape[3])
    return cache
  full, _ = _decode_all(model, prompt, prompt_mask, continuation)
  grown, cache = _decode_all(model, prompt, prompt_mask, continuation, hold=grow)
  assert held == [5, 6, 9, 9, 9, 12, 12, 12] and cache.capacity == 12
  assert cache.values[1].shape == (2, model.cfg.num_kv_heads, 12, model.cfg.head_dim)
  real = np.concatenate([prompt_mask, np.ones((2, 7), np.int32)], axis=1).astype(bool)  # padding sees nothing
  np.testing.assert_allclose(np.asarray(grown)[real], np.asarray(full)[real], atol=1e-6, rtol=0)
  assert int(cache.live_bytes()) == int(_decode_all(model, prompt, prompt_mask, continuation)[1].live_bytes())


def test_cache_counts_live_bytes_of_valid_tokens_only():
  model = _model()
  prompt_mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], np.int32)
  _, cache = _decode_all(model, np.ones((2, 4), np.int32), prompt_mask, np.ones((2, 3), np.int32))
  per_token = 2 * model.cfg.num_layers * model.cfg.num_kv_heads * model.cfg.head_dim * 4
  assert int(cache.live_bytes()) == (2 + 4 + 2 * 3) * per_token


def test_bfloat16_compute_stays_close_to_float32():
  tokens = np.random.RandomState(1).randint(0, 61, (2, 16))
  f32 = np.asarray(_model()(tokens))
  bf16 = _model(dtype="bfloat16")
  assert bf16.layers[0].mlp.up_proj.weight[...].dtype == jnp.float32  # weights stay float32
  got = np.asarray(bf16(tokens))
  assert got.dtype == np.float32
  assert np.abs(got - f32).max() < 0.05 * np.abs(f32).max()
  assert np.abs(got - f32).max() > 0  # bfloat16 really was used


def test_precomputed_rotations_stand_in_for_positions():
  """What the sampler does (rotations for a whole decode computed once) gives the same hidden states."""
  model = _model()
  tokens = np.random.RandomState(3).randint(0, 61, (2, 6))
  positions = np.array([[0, 1, 2, 3, 4, 5], [7, 8, 9, 3, 2, 1]])
  want, _ = model.hidden_states(tokens, positions=positions)
  got, _ = model.hidden_states(tokens, rotations=model.rotations(positions))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert np.abs(np.asarray(want) - np.asarray(model.hidden_states(tokens)[0])).max() > 1e-3  # positions matter
  with pytest.raises(ValueError, match="not both"):
    model.hidden_states(tokens, positions=positions, rotations=model.rotations(positions))


def test_last_only_gives_the_last_position_and_the_same_cache():
  model = _model()
  tokens, mask = np.random.RandomState(4).randint(1, 61, (2, 7)), np.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  run = lambda last_only: model.hidden_states(tokens, positions=positions, segment_ids=mask, last_only=last_only,
                                              cache=jm.DenseKVCache.create(model.cfg, 2, 9))
  (full, full_cache), (last, last_cache) = run(False), run(True)
  assert last.shape == (2, 1, model.cfg.hidden_size)
  np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1:]), atol=1e-6, rtol=0)
  for got, want in zip(jax.tree.leaves(last_cache), jax.tree.leaves(full_cache)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  no_cache = model.hidden_states(tokens, positions=positions, segment_ids=mask, last_only=True)[0]
  np.testing.assert_allclose(np.asarray(no_cache), np.asarray(full[:, -1:]), atol=1e-6, rtol=0)
