"""With a budget covering the whole sequence, every baseline decodes exactly like the dense cache."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost.generate import SamplingConfig, generate
from jaxpost.models import baseline_caches as bc
from tests.generate.helpers import tiny_model

P, C = 7, 10
FACTORIES = [bc.SinkWindow(budget=P + C, sinks=2), bc.H2O(budget=64, recent=3), bc.TOVA(budget=P + C),
             bc.Quest(budget=P + C + 3, page_size=4)]


def _prompts():
  rng = np.random.RandomState(0)
  lengths = np.array([7, 3, 5])
  mask = (np.arange(P)[None] >= P - lengths[:, None]).astype(np.int32)
  return rng.randint(1, 53, (3, P)) * mask, mask


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: type(f).__name__)
def test_generate_with_a_full_budget_equals_dense(factory):
  model = tiny_model(0, logit_scale=20.0)
  prompt, mask = _prompts()
  cfg = SamplingConfig(completion_len=C, temperature=0.0)
  limits = np.array([C, 4, 7])  # rows that finish early feed padding steps to the cache
  dense = generate(model, prompt, mask, cfg=cfg, max_new_tokens=limits)
  got = generate(model, prompt, mask, cfg=cfg, max_new_tokens=limits, cache_factory=factory)
  np.testing.assert_array_equal(np.asarray(got.completion_tokens), np.asarray(dense.completion_tokens))
  np.testing.assert_array_equal(np.asarray(got.completion_mask), np.asarray(dense.completion_mask))
  np.testing.assert_allclose(np.asarray(got.logps), np.asarray(dense.logps), atol=1e-6, rtol=0)


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: type(f).__name__)
def test_teacher_forced_logits_with_a_full_budget_equal_dense(factory):
  model = tiny_model(1)
  prompt, mask = _prompts()
  continuation = np.random.RandomState(1).randint(1, 53, (3, C))
  dense, _ = _decode_all(model, prompt, mask, continuation, jm.DenseKVCache.create)
  got, cache = _decode_all(model, prompt, mask, continuation, factory)
  np.testing.assert_allclose(got, dense, atol=1e-5, rtol=0)
  if isinstance(cache, bc.EvictionKVCache):
    assert (np.asarray(cache.compression()) == 1).all()


def _decode_all(model, prompt, prompt_mask, continuation, factory):
  """Prefill, then one continuation token per step; logits [B, P + C, V] at real positions (0 at padding)."""
  b = prompt.shape[0]
  graphdef, state = nnx.split(model)
  cache = factory(model.cfg, b, P + C)
  positions = np.maximum(np.cumsum(prompt_mask, 1) - 1, 0)
  logits, cache = _step(graphdef, state, prompt, positions, prompt_mask, cache)
  outs = [np.asarray(logits) * prompt_mask[:, :, None]]
  for i in range(continuation.shape[1]):
    position = (prompt_mask.sum(1) + i)[:, None]
    logits, cache = _step(graphdef, state, continuation[:, i:i + 1], position, np.ones((b, 1), np.int32), cache)
    outs.append(np.asarray(logits))
  return np.concatenate(outs, axis=1), cache


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _step(graphdef, state, tokens, positions, segment_ids, cache):
  return nnx.merge(graphdef, state)(tokens, positions=positions, segment_ids=segment_ids, cache=cache)


@pytest.mark.parametrize("make,message", [
    (lambda: bc.SinkWindow(budget=3, sinks=4), "sinks must be in"),
    (lambda: bc.H2O(budget=0, recent=0), "budget must be a positive int"),
    (lambda: bc.H2O(budget=4, recent=5), "recent must be in"),
    (lambda: bc.TOVA(budget=2.5), "budget must be a positive int"),
    (lambda: bc.Quest(budget=8, page_size=16), "at least one page"),
])
def test_bad_settings_are_refused(make, message):
  with pytest.raises(ValueError, match=message):
    make()
