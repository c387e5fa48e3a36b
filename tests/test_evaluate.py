"""Evaluation: an overflowing KV cache is reported and warned about, never a silently different accuracy."""

import warnings

import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost import data, rewards
from jaxpost.evaluate import EvalConfig, evaluate
from jaxpost.models import dms
from jaxpost.models.dms_cache import DMSCacheFactory, DMSKVCache


def test_rows_that_overflow_the_cache_are_counted_and_warned_about():
  tokenizer = data.arith_tokenizer()
  cfg = jm.ModelConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                       head_dim=16, intermediate_size=32, dms=dms.DMSConfig(window=2))
  model = jm.Decoder(cfg, rngs=nnx.Rngs(0))
  records = data.make_dataset("easy", "test", 4, seed=0)
  reward_fn, extract = rewards.task_scoring("easy")
  run = lambda factory: evaluate(model, tokenizer, records, reward_fn=reward_fn, extract_answer=extract,
                                 cfg=EvalConfig(completion_len=4, batch_size=4), cache_factory=factory)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert run(DMSCacheFactory())["overflow_fraction"] == 0.0
  tiny = DMSCacheFactory(budget_bytes=DMSKVCache.create(cfg, 4, 1).allocated_bytes() * 4)  # 4 slots: too few
  with pytest.warns(RuntimeWarning, match=r"4 of 4 rows overflowed their KV cache"):
    assert run(tiny)["overflow_fraction"] == 1.0
