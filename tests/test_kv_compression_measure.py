"""experiments/kv_compression's memory measurement: KV tokens held after replaying prompt + reference answer, whole
or cut at a completion cap (the longer-generation view), counted independently from the token lists."""

import numpy as np
import pytest

from experiments import kv_compression
from jaxpost import data
from jaxpost.models import DenseKVCache
from jaxpost.models import baseline_caches as bc
from tests.generate.helpers import tiny_model


@pytest.fixture(scope="module")
def problems():
  tokenizer = data.arith_tokenizer()
  records = data.task_records("easy", "test", 6, seed=4)
  prompt_N = np.array([len(data.encode_prompt(tokenizer, r["prompt"])) for r in records])
  completion_N = np.array([len(data.encode_completion(tokenizer, r["completion"])) for r in records])
  return tokenizer, records, prompt_N, completion_N, tiny_model(0, vocab=len(tokenizer))


@pytest.mark.parametrize("cap", [None, 5, 12])
def test_dense_holds_the_prompt_and_the_replayed_completion(problems, cap):
  tokenizer, records, prompt_N, completion_N, model = problems
  held, read = kv_compression.measure(model, tokenizer, records, DenseKVCache.create, max_completion=cap)
  expected_N = prompt_N + (completion_N if cap is None else np.minimum(completion_N, cap))
  assert held == pytest.approx(expected_N.mean()) and read is None


def test_an_eviction_budget_caps_what_is_held(problems):
  tokenizer, records, prompt_N, completion_N, model = problems
  held, _ = kv_compression.measure(model, tokenizer, records, bc.SinkWindow(budget=10, sinks=2), max_completion=4)
  assert held == pytest.approx(np.minimum(prompt_N + np.minimum(completion_N, 4), 10).mean())
