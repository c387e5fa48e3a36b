"""DMS model pieces: the delayed-eviction bias against a brute-force reference, the relaxation, the query neuron,
and the decoder hooks (all-keep equals dense, the adapter starts as a no-op)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost.models import dms
from jaxpost.models.attention import grouped_attention, segment_causal_mask
from jaxpost.models.rope import apply_rope, inverse_frequencies, rotary


def _cfg(variant="query_neuron", window=3, **overrides):
  return jm.ModelConfig(vocab_size=61, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                        intermediate_size=64, qk_norm=True,
                        dms=dms.DMSConfig(variant=variant, window=window, **overrides))


def _brute_force_bias(log_keep_TxK, window, t):
  """bias[k_head, q, key] built one query at a time: 0 inside the window, the successor's log-keep beyond it."""
  bias = np.zeros((log_keep_TxK.shape[1], t, t))
  for head in range(log_keep_TxK.shape[1]):
    for q in range(t):
      for key in range(q + 1):
        if q - key > window:
          bias[head, q, key] = log_keep_TxK[key + 1, head]
  return bias


def test_hard_mask_equals_a_token_by_token_eviction_simulation():
  rng = np.random.RandomState(0)
  t, k, window = 14, 2, 3
  evict_TxK = rng.rand(t, k) < 0.5
  a_BxTxK = jnp.asarray(np.where(evict_TxK, 2.0, -2.0)[None], jnp.float32)
  bias, decisions = dms.eviction_bias(a_BxTxK, dms.DMSConfig(window=window), mode="hard")
  visible = np.asarray(bias[0]) == 0
  np.testing.assert_array_equal(np.asarray(decisions[0]), evict_TxK)
  for head in range(k):
    live = set()
    for q in range(t):  # token q arrives; a flagged token leaves once it is more than `window` behind
      live.add(q)
      live = {j for j in live if not (q - j > window and evict_TxK[j + 1, head])}
      assert {j for j in range(q + 1) if visible[head, q, j]} == live, (head, q)


@pytest.mark.parametrize("window", [0, 2, 5])
def test_soft_bias_equals_brute_force_reference(window):
  rng = np.random.RandomState(window)
  t = 9
  a_BxTxK = jnp.asarray(rng.randn(2, t, 3) * 0.3, jnp.float32)
  cfg = dms.DMSConfig(window=window, tau=0.5)
  bias, _ = dms.eviction_bias(a_BxTxK, cfg, mode="soft")
  for row in range(2):
    alpha = 1 / (1 + np.exp(-np.asarray(a_BxTxK[row], np.float64) / cfg.tau))
    want = _brute_force_bias(np.log(1 - alpha), window, t)
    np.testing.assert_allclose(np.asarray(bias[row]), want, atol=1e-6)


def test_relaxation_is_straight_through_and_noise_keeps_the_eviction_probability():
  cfg = dms.DMSConfig(tau=0.25)
  a = jnp.array([-1.0, 0.3, 2.0])
  l, d = dms.relaxed_decisions(a, cfg, None)
  np.testing.assert_array_equal(np.asarray(d), [0.0, 1.0, 1.0])
  grad = jax.grad(lambda x: jnp.sum(dms.relaxed_decisions(x, cfg, None)[1]))(a)
  sig = 1 / (1 + np.exp(-np.asarray(a) / cfg.tau))
  np.testing.assert_allclose(np.asarray(grad), sig * (1 - sig) / cfg.tau, rtol=1e-5)
  # P[(a + g1 - g2) / tau > 0] = sigmoid(a) for Gumbel g1, g2, whatever tau
  a_many = jnp.full((200_000,), 0.7)
  _, d_noisy = dms.relaxed_decisions(a_many, cfg, jax.random.key(0))
  assert abs(float(jnp.mean(d_noisy)) - 1 / (1 + np.exp(-0.7))) < 0.005


def test_query_neuron_reads_first_head_of_each_group_after_qnorm_and_is_zeroed_around_rope():
  cfg = _cfg()
  model = jm.Decoder(cfg, rngs=nnx.Rngs(0))
  attn = model.layers[0].attn
  x = jax.random.normal(jax.random.key(1), (1, 5, cfg.hidden_size))
  positions = jnp.arange(5)[None]
  q, _, _, neuron = attn.project(x, model.rotations(positions))
  raw = attn.q_norm(attn.q_proj(x).reshape(1, 5, 4, 12))  # heads 0 and 2 open the two groups of 2
  np.testing.assert_allclose(np.asarray(neuron), np.asarray(raw[:, :, [0, 2], -1]), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(q[:, :, [0, 2], -1]), 0.0)
  assert np.all(np.asarray(q[:, 1:, [1, 3], -1]) != 0)  # other heads untouched
  zeroed = raw.at[:, :, [0, 2], -1].set(0)
  rot = rotary(positions, inverse_frequencies(12, cfg.rope_theta))
  want = apply_rope(zeroed, rot).at[:, :, [0, 2], -1].set(0)
  np.testing.assert_allclose(np.asarray(q), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_all_keep_dms_attention_equals_dense_attention():
  rng = np.random.RandomState(2)
  q = jnp.asarray(rng.randn(2, 10, 4, 8), jnp.float32)
  k, v = (jnp.asarray(rng.randn(2, 10, 2, 8), jnp.float32) for _ in range(2))
  mask = segment_causal_mask(jnp.asarray([[1] * 10, [1] * 6 + [2] * 4]))
  keep_logits = jnp.full((2, 10, 2), -50.0)
  dense = grouped_attention(q, k, v, mask)
  for mode in ("soft", "hard"):
    bias, _ = dms.eviction_bias(keep_logits, dms.DMSConfig(window=1), mode=mode)
    np.testing.assert_allclose(np.asarray(grouped_attention(q, k, v, mask, bias)), np.asarray(dense), atol=1e-6)


def test_zero_initialised_adapter_model_equals_the_dense_model():
  cfg = _cfg("adapter")
  model = jm.Decoder(cfg, rngs=nnx.Rngs(0))
  dense = jm.Decoder(cfg.replace(dms=None), rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(dense))  # same base weights, DMS adapter as initialised
  tokens = np.random.RandomState(3).randint(0, 61, (2, 12))
  want = np.asarray(dense(tokens))
  np.testing.assert_allclose(np.asarray(model(tokens)), want, atol=1e-5)  # no cache: no eviction
  for mode in ("soft", "hard"):  # a = -offset < 0: nothing evicted, and the soft bias is ~0
    logits, decisions = dms.forward(model, tokens, mode=mode)
    np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5)
    assert not np.any(np.asarray(decisions))
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n_params == jm.param_count(cfg) == jm.param_count(cfg.replace(dms=None)) + 2 * (48 + 48 * 2 + 2)


def test_forward_returns_each_layers_decisions():
  cfg = _cfg()
  model = jm.Decoder(cfg, rngs=nnx.Rngs(0))
  tokens = np.random.RandomState(4).randint(0, 61, (2, 7))
  logits, decisions = dms.forward(model, tokens, mode="soft")
  assert logits.shape == (2, 7, 61)
  assert decisions.shape == (2, 2, 7, 2)
  x = model.embed(tokens)  # recompute layer 0's decisions by hand: a = 100 * neuron - 5 > 0
  rot = model.rotations(jnp.arange(7)[None])
  _, _, _, neuron = model.layers[0].attn.project(model.layers[0].attn_norm(x), rot)
  np.testing.assert_array_equal(np.asarray(decisions[0]), np.asarray(100 * neuron - 5 > 0, np.float32))
  np.testing.assert_array_equal(np.asarray(dms.forward(model, tokens, mode="hard")[1][0]), np.asarray(decisions[0]))
  assert 0 < float(jnp.mean(decisions)) < 1
  with pytest.raises(ValueError, match="mode"):
    dms.forward(model, tokens, mode="noisy")


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="variant"):
    dms.DMSConfig(variant="neuron")
  with pytest.raises(ValueError, match="window"):
    dms.DMSConfig(window=-1)
  with pytest.raises(ValueError, match="tau"):
    dms.DMSConfig(tau=0.0)
