"""The DMS-compressed KV cache against the training forward (hard decisions, no noise) and a brute-force count."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost.models import dms
from jaxpost.models.dms_cache import DMSCacheFactory, DMSKVCache, capacity_for_budget

_STEP = nnx.jit(lambda m, t, pos, seg, c: m(t, positions=pos, segment_ids=seg, cache=c))
_HARD = nnx.jit(lambda m, t, seg, pos: dms.forward(m, t, positions=pos, segment_ids=seg, mode="hard"))
N = 20  # tokens per sequence; three sequences, the last two left-padded


def _model(variant="query_neuron", window=3):
  cfg = jm.ModelConfig(vocab_size=61, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                       intermediate_size=64, qk_norm=True, dms=dms.DMSConfig(variant=variant, window=window))
  model = jm.Decoder(cfg, rngs=nnx.Rngs(0))
  if variant == "adapter":  # a trained-looking adapter: about half the decisions evict
    for i, layer in enumerate(model.layers):
      layer.attn.dms_proj.weight.set_value(0.05 * jax.random.normal(jax.random.key(i), (48, 2)).T)
  return model


def _feed(model, cache, tokens_BxT, valid_BxT, positions_BxT, chunks):
  """Feeds the columns of `tokens_BxT` in consecutive chunks of the given sizes; logits of every column."""
  outs, start = [], 0
  for size in chunks:
    cols = slice(start, start + size)
    logits, cache = _STEP(model, tokens_BxT[:, cols], positions_BxT[:, cols], valid_BxT[:, cols], cache)
    outs.append(logits)
    start += size
  assert start == tokens_BxT.shape[1]
  return np.asarray(jnp.concatenate(outs, axis=1)), cache


def _left_padded_batch(lengths=(N, N - 5, N - 8), seed=0):
  rng = np.random.RandomState(seed)
  valid = (np.arange(N)[None] >= N - np.asarray(lengths)[:, None]).astype(np.int32)
  return rng.randint(1, 61, (len(lengths), N)) * valid, valid, np.maximum(np.cumsum(valid, axis=1) - 1, 0)


def _full_forward(model, tokens, valid, positions):
  """The training forward with hard decisions and no noise, padding-aware (real tokens are contiguous)."""
  return np.asarray(_HARD(model, tokens, valid, positions)[0])


@pytest.mark.parametrize("variant,chunks", [("query_neuron", [8] + [1] * 12), ("adapter", [8] + [1] * 12),
                                            ("query_neuron", [1] * N), ("query_neuron", [6, 1, 6, 1, 6])])
def test_cached_decoding_equals_the_hard_training_forward(variant, chunks):
  model = _model(variant)
  batch = _left_padded_batch()
  cached, cache = _feed(model, DMSKVCache.create(model.cfg, 3, capacity=N), *batch, chunks)
  full, valid = _full_forward(model, *batch), batch[1].astype(bool)
  np.testing.assert_allclose(cached[valid], full[valid], atol=1e-4, rtol=0)
  lengths = valid.sum(axis=1)
  assert np.all(np.asarray(cache.live_tokens()) < lengths[None, :, None])  # evictions happened
  assert not np.any(cache.overflow_B)
  np.testing.assert_array_equal(np.asarray(cache.seen_B), lengths)


def test_live_tokens_equal_the_models_evictions_outside_the_window():
  model = _model()
  batch = _left_padded_batch((N, N, N), seed=1)
  d = np.asarray(_HARD(model, *batch)[1])  # no noise: 1[a > 0], exactly the inference rule
  _, cache = _feed(model, DMSKVCache.create(model.cfg, 3, N), *batch, [8] + [1] * 12)
  # token j is gone iff its successor's decision evicts it and it left the window of the last token, N - 1 - j > 3
  evicted = d[:, :, 1:N - 3, :].sum(axis=2)
  np.testing.assert_array_equal(np.asarray(cache.live_tokens()), N - evicted)
  eviction_fraction_B = evicted.mean(axis=(0, 2)) / N
  np.testing.assert_allclose(np.asarray(cache.compression()), 1 / (1 - eviction_fraction_B), rtol=1e-6)
  assert np.all((0.2 < eviction_fraction_B) & (eviction_fraction_B < 0.8))


def _peak_live(d_LxBxTxK, window):
  """Most tokens held at once by any (layer, sequence, head) when fed one at a time, by simulation."""
  peak = 0
  for layer, row, head in np.ndindex(d_LxBxTxK.shape[0], d_LxBxTxK.shape[1], d_LxBxTxK.shape[3]):
    live = set()
    for t in range(d_LxBxTxK.shape[2]):
      live.add(t)
      live = {j for j in live if not (t - j > window and d_LxBxTxK[layer, row, j + 1, head])}
      peak = max(peak, len(live))
  return peak


def test_memory_budget_sets_capacity_and_live_bytes_follow_live_tokens():
  model = _model()
  cfg = model.cfg
  batch = _left_padded_batch((N, N, N), seed=2)
  peak = _peak_live(np.asarray(_HARD(model, *batch)[1]), window=3)
  slot_bytes = cfg.num_layers * cfg.num_kv_heads * 2 * cfg.head_dim * 4  # one slot, all layers and heads, f32
  budget = 3 * peak * slot_bytes + slot_bytes  # room for `peak` slots per sequence, not for `peak + 1`
  factory = DMSCacheFactory(budget_bytes=budget)
  cache = factory(cfg, 3, N)  # the sampler asks for the dense length; the budget caps it
  assert cache.capacity == capacity_for_budget(cfg, 3, budget) == peak < N
  assert cache.allocated_bytes() <= budget
  cached, cache = _feed(model, cache, *batch, [1] * N)
  assert not np.any(cache.overflow_B)
  np.testing.assert_allclose(cached, _full_forward(model, *batch), atol=1e-4, rtol=0)
  live = np.asarray(cache.live_tokens())
  assert int(cache.live_bytes()) == live.sum() * 2 * cfg.head_dim * 4
  assert int(cache.live_bytes()) < 3 * N * slot_bytes  # what a dense cache of the sequences holds
  _, small = _feed(model, DMSKVCache.create(cfg, 3, peak - 1), *batch, [1] * N)
  assert np.any(small.overflow_B)  # one slot fewer does not fit, and says so
  assert hash(factory) == hash(DMSCacheFactory(budget_bytes=budget))


def test_padding_steps_leave_the_cache_unchanged():
  model = _model()
  tokens, valid, positions = _left_padded_batch()
  _, cache = _feed(model, DMSKVCache.create(model.cfg, 3, N), tokens, valid, positions, [8] + [1] * 12)
  for size in (1, 6):  # a decode step and a chunk where every token is padding
    no = np.zeros((3, size), np.int32)
    _, after = _STEP(model, tokens[:, :size], no, no, cache)
    for a, b in zip(jax.tree.leaves(cache.layers), jax.tree.leaves(after.layers)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(after.seen_B), valid.sum(axis=1))


def test_create_rejects_a_model_without_dms():
  with pytest.raises(ValueError, match="dms"):
    DMSKVCache.create(_model().cfg.replace(dms=None), 1, 8)
  with pytest.raises(ValueError, match="no slot"):
    capacity_for_budget(_model().cfg, 4, 100)


def test_generate_reports_overflow_on_exactly_the_rows_that_ran_out_of_slots():
  from jaxpost.generate import SamplingConfig, generate, left_pad

  model = _model()
  rng = np.random.RandomState(1)
  prompts = [rng.randint(1, 61, 18).tolist(), rng.randint(1, 61, 3).tolist()]
  tokens, mask = left_pad(prompts)
  sampling = SamplingConfig(completion_len=4, temperature=0.0)
  slots = 8  # the short row needs 3 + 4 = 7 slots at most, the long one 18 from its prefill on
  budget = DMSKVCache.create(model.cfg, 2, 1).allocated_bytes() * slots
  bounded = generate(model, tokens, mask, cfg=sampling, cache_factory=DMSCacheFactory(budget_bytes=budget))
  unbounded = generate(model, tokens, mask, cfg=sampling, cache_factory=DMSCacheFactory())
  assert np.asarray(bounded.overflow).tolist() == [True, False]
  assert not np.asarray(unbounded.overflow).any()
  np.testing.assert_array_equal(np.asarray(bounded.completion_tokens)[1], np.asarray(unbounded.completion_tokens)[1])


@pytest.mark.parametrize("factory", [jm.DenseKVCache.create, DMSCacheFactory()], ids=["dense", "dms"])
def test_chunked_prefill_equals_the_one_shot_prefill(factory):
  from jaxpost.generate import SamplingConfig, generate

  model = _model("adapter")
  tokens, valid, _ = _left_padded_batch()
  one_shot = SamplingConfig(completion_len=6, temperature=0.0)
  whole = generate(model, tokens, valid, cfg=one_shot, cache_factory=factory)
  chunked = generate(model, tokens, valid, cfg=dataclasses.replace(one_shot, prefill_chunk=3), cache_factory=factory)
  np.testing.assert_array_equal(np.asarray(chunked.completion_tokens), np.asarray(whole.completion_tokens))
  np.testing.assert_allclose(np.asarray(chunked.logps), np.asarray(whole.logps), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(chunked.prompt_tokens), tokens)


def test_a_compressed_capacity_below_the_prompt_works_with_chunked_prefill():
  from jaxpost.generate import SamplingConfig, generate

  model = _model("adapter")
  for layer in model.layers:  # every token is evicted once it leaves the window of 3: 3 + 1 live at most
    layer.attn.dms_proj.bias.set_value(jnp.full(layer.attn.dms_proj.bias.shape, 5.0))
  tokens, valid, _ = _left_padded_batch()
  factory = DMSCacheFactory(compression=8.0, margin=4)
  assert factory.capacity(model.cfg, 3, N + 6) == -(-(N + 6) // 8) + 3 + 4 == 11  # of a dense 26
  assert factory.capacity(model.cfg, 3, 8) == 8  # never more than the dense length
  sampling = SamplingConfig(completion_len=6, temperature=0.0, prefill_chunk=4)
  chunked = generate(model, tokens, valid, cfg=sampling, cache_factory=factory)
  unbounded = generate(model, tokens, valid, cfg=sampling, cache_factory=DMSCacheFactory())
  one_shot = generate(model, tokens, valid, cfg=dataclasses.replace(sampling, prefill_chunk=0), cache_factory=factory)
  assert not np.asarray(chunked.overflow).any()
  assert np.asarray(one_shot.overflow).tolist() == [True, True, True]  # 20, 15 and 12 prompt tokens > 11 slots
  np.testing.assert_array_equal(np.asarray(chunked.completion_tokens), np.asarray(unbounded.completion_tokens))
