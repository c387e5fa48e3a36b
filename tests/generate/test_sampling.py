"""Token choice: truncation against a numpy reference, config checks, and sampled frequencies vs softmax(l / T)."""

import jax
import numpy as np
import pytest
import scipy.stats

from jaxpost.generate import SamplingConfig, choose_tokens, generate, left_pad, truncated_logits
from tests.generate.helpers import log_softmax, reference_probs, tiny_model


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 12, 0.6)])
def test_truncation_matches_reference(temperature, top_k, top_p):
  logits = np.random.RandomState(0).normal(scale=3.0, size=(6, 40)).astype(np.float32)
  cfg = SamplingConfig(completion_len=1, temperature=temperature, top_k=top_k, top_p=top_p)
  got = np.asarray(jax.nn.softmax(truncated_logits(logits, cfg), axis=-1))
  for row in range(6):
    np.testing.assert_allclose(got[row], reference_probs(logits[row], temperature=temperature, top_k=top_k,
                                                         top_p=top_p), atol=1e-6)


def test_choose_tokens_reports_both_log_probs():
  logits = np.random.RandomState(1).normal(scale=2.0, size=(5, 30)).astype(np.float32)
  cfg = SamplingConfig(completion_len=1, temperature=0.8, top_k=6, top_p=0.9)
  keys = jax.random.split(jax.random.key(3), 5)
  tokens, logps, sampling_logps = map(np.asarray, choose_tokens(logits, keys, cfg))
  for row, token in enumerate(tokens):
    probs = reference_probs(logits[row], temperature=0.8, top_k=6, top_p=0.9)
    assert probs[token] > 0
    np.testing.assert_allclose(sampling_logps[row], np.log(probs[token]), atol=1e-5)
    np.testing.assert_allclose(logps[row], log_softmax(logits[row] / 0.8)[token], atol=1e-5)
  greedy_tokens, greedy_logps, greedy_sampling = map(np.asarray, choose_tokens(
      logits, None, SamplingConfig(completion_len=1, temperature=0.0)))
  np.testing.assert_array_equal(greedy_tokens, logits.argmax(-1))
  np.testing.assert_allclose(greedy_logps, log_softmax(logits).max(-1), atol=1e-6)
  assert not greedy_sampling.any()


@pytest.mark.parametrize("kwargs, message", [
    (dict(completion_len=0), "completion_len"), (dict(temperature=-1.0), "temperature"),
    (dict(top_k=-2), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(n=0), "n"),
    (dict(stop_ids=(3, -1)), "stop_ids"), (dict(temperature=0.0, top_k=4), "greedy"),
])
def test_config_rejects_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SamplingConfig(**{"completion_len": 4, **kwargs})


def test_config_is_hashable_with_list_stop_ids():
  assert hash(SamplingConfig(completion_len=4, stop_ids=[2, 5])) == hash(SamplingConfig(completion_len=4,
                                                                                         stop_ids=(2, 5)))


def _assert_frequencies_match(tokens, probs):
  """Pass: no draw outside the support, chi-square goodness of fit p > 1e-3 on the kept tokens, and every
  frequency within 0.02 of its probability (about 3.5 standard deviations at most for 8192 draws)."""
  counts = np.bincount(tokens, minlength=probs.size)
  assert counts[probs == 0].sum() == 0
  support = probs > 0
  assert scipy.stats.chisquare(counts[support], probs[support] * counts.sum()).pvalue > 1e-3
  assert np.abs(counts / counts.sum() - probs).max() < 0.02


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.6, 0, 0.85), (1.5, 6, 1.0),
                                                       (1.2, 8, 0.7)])
def test_choose_tokens_frequencies_match_truncated_softmax(temperature, top_k, top_p):
  logits = np.random.RandomState(2).normal(scale=1.5, size=16).astype(np.float32)
  cfg = SamplingConfig(completion_len=1, temperature=temperature, top_k=top_k, top_p=top_p)
  keys = jax.random.split(jax.random.key(5), 8192)
  tokens, _, _ = jax.jit(choose_tokens, static_argnames="cfg")(np.tile(logits, (8192, 1)), keys, cfg=cfg)
  _assert_frequencies_match(np.asarray(tokens), reference_probs(logits, temperature=temperature, top_k=top_k,
                                                                top_p=top_p))


def test_generated_frequencies_match_truncated_softmax():
  """8192 samples of one prompt for one step, through the whole sampler (per-row keys, prefill, truncation)."""
  model = tiny_model(vocab=16, logit_scale=60.0)
  tokens, mask = left_pad([[3, 1, 4, 1, 5]])
  cfg = SamplingConfig(completion_len=1, temperature=1.2, top_k=10, top_p=0.9, n=8192)
  rollout = generate(model, tokens, mask, cfg=cfg, rng=jax.random.key(7))
  probs = reference_probs(np.asarray(model(tokens))[0, -1], temperature=1.2, top_k=10, top_p=0.9)
  assert 0.05 < probs.max() < 0.9 and (probs == 0).any()  # neither flat nor one-hot, and truncated
  _assert_frequencies_match(np.asarray(rollout.completion_tokens)[:, 0], probs)
