"""Grouped-query attention against a per-head numpy reference, for the decode step (one query) and longer blocks."""

import numpy as np
import pytest

from jaxpost.models import attention


def _reference(q_BxTxHxD, k_BxKxSxD, v_BxKxSxD, mask_BxTxS, bias_BxKxTxS):
  b, t, h, d = q_BxTxHxD.shape
  group = h // k_BxKxSxD.shape[1]
  out = np.zeros_like(q_BxTxHxD, dtype=np.float64)
  for i in range(b):
    for head in range(h):
      kv = head // group
      scores = q_BxTxHxD[i, :, head] @ k_BxKxSxD[i, kv].T / np.sqrt(d) + bias_BxKxTxS[i, kv]
      scores = np.where(mask_BxTxS[i], scores, -1e30)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      out[i, :, head] = (probs / probs.sum(-1, keepdims=True)) @ v_BxKxSxD[i, kv]
  return out


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_major_attention_matches_a_per_head_reference(t, with_bias):
  rng = np.random.RandomState(t)
  b, h, k, s, d = 2, 6, 2, 9, 8
  q, keys, values = rng.randn(b, t, h, d), rng.randn(b, k, s, d), rng.randn(b, k, s, d)
  mask = rng.rand(b, t, s) > 0.3
  mask[..., 0] = True
  bias = rng.randn(b, k, t, s) if with_bias else np.zeros((b, k, t, s))
  keys_d_major = np.swapaxes(keys, 2, 3)  # the cache's key layout [B, K, D, S]
  got = attention.head_major_attention(q.astype(np.float32), keys_d_major.astype(np.float32),
                                       values.astype(np.float32), mask, bias.astype(np.float32) if with_bias else None)
  np.testing.assert_allclose(np.asarray(got), _reference(q, keys, values, mask, bias), atol=1e-5, rtol=1e-5)
