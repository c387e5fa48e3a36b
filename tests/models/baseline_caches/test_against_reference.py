"""Each baseline cache, fed hand-made queries/keys/values directly, against its brute-force reference: which tokens
are kept (or read) after every step, and the attention outputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpost.models as jm
from jaxpost.models import baseline_caches as bc
from tests.models.baseline_caches import reference

B, P, DECODE, H, K, D = 2, 6, 9, 4, 2, 4
STEPS = [P] + [1] * DECODE
HEAVY = {0: (1, 4, 8), 1: (2, 9)}  # per KV head: cache columns whose keys every query of the group aligns with


def _cfg():
  return jm.ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=H, num_kv_heads=K, head_dim=D,
                        intermediate_size=8)


def _pattern(seed=0):
  """Streams laid out by column: a few heavy-hitter keys per KV head, queries aligned with them, random rest.
  Row 1 has two left-padding columns and one padding decode step (a finished row's)."""
  rng = np.random.RandomState(seed)
  n = P + DECODE
  k = rng.normal(size=(B, n, K, D)) * 0.5
  q = rng.normal(size=(B, n, H, D)) * 0.5
  for kh, columns in HEAVY.items():
    k[:, list(columns), kh, kh] += 3.0
    q[:, :, kh * (H // K):(kh + 1) * (H // K), kh] += 1.5
  v = rng.normal(size=(B, n, K, D))
  valid = np.ones((B, n), bool)
  valid[1, :2] = False
  valid[1, P + 3] = False
  return q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), valid


@functools.partial(jax.jit, static_argnames=("t",))
def _step(cache, q, k, v, valid, *, start, t):
  cut = lambda x: jax.lax.dynamic_slice_in_dim(x, start, t, axis=1)
  cache = cache.begin_step(cut(valid))
  out, cache = cache.attend(0, cut(q), cut(k), cut(v))
  return out, cache.end_step()


def _run(cache, q, k, v, valid):
  """Feeds the streams step by step; outputs [B, N, H, D] and the cache after every step."""
  outs, caches, start = [], [], 0
  for t in STEPS:
    out, cache = _step(cache, q, k, v, valid, start=start, t=t)
    outs.append(np.asarray(out))
    caches.append(cache)
    start += t
  return np.concatenate(outs, axis=1), caches


def _kept(cache):
  tokens = np.asarray(cache.kept_tokens(0))
  return [[sorted(int(x) for x in tokens[b, :, kh] if x >= 0) for kh in range(K)] for b in range(B)]


POLICIES = [
    ("sink_window", bc.SinkWindow(budget=5, sinks=2), dict(sinks=2)),
    ("h2o", bc.H2O(budget=5, recent=2), dict(recent=2)),
    ("tova", bc.TOVA(budget=5), {}),
]


@pytest.mark.parametrize("rule,policy,extra", POLICIES, ids=[p[0] for p in POLICIES])
def test_eviction_keeps_what_the_reference_keeps_at_every_step(rule, policy, extra):
  q, k, v, valid = _pattern()
  out, caches = _run(policy(_cfg(), B, capacity=P + DECODE), q, k, v, valid)
  ref_out, ref_kept = reference.eviction_reference(rule, q, k, v, valid, STEPS, budget=policy.budget, **extra)
  for step, cache in enumerate(caches):
    assert _kept(cache) == ref_kept[step], f"{rule}: kept tokens differ after step {step}"
  np.testing.assert_allclose(out[valid], ref_out[valid], atol=1e-5, rtol=0)
  seen_B = valid.sum(1)
  np.testing.assert_array_equal(np.asarray(caches[-1].live_tokens())[0], np.minimum(seen_B, 5)[:, None].repeat(K, 1))
  assert int(caches[-1].live_bytes()) == np.minimum(seen_B, 5).sum() * K * 2 * D * 4


def test_the_pattern_tells_the_rules_apart():
  """Hand-worked, row 0 after its 15 tokens (budget 5): the sink window keeps 0, 1 and the newest three; H2O keeps
  the two newest, the early heavy hitters and token 0 (mass accumulated over every query), while the late heavy
  hitters (8 / 9) lose to older mass; TOVA, ranking by the newest query alone, keeps every heavy hitter."""
  q, k, v, valid = _pattern()
  final = {rule: reference.eviction_reference(rule, q, k, v, valid, STEPS, budget=5, **extra)[1][-1][0]
           for rule, _, extra in POLICIES}
  assert final["sink_window"] == [[0, 1, 12, 13, 14]] * 2
  assert final["h2o"] == [[0, 1, 4, 13, 14], [0, 1, 2, 13, 14]]
  for kh, heavy in HEAVY.items():
    assert set(heavy) <= set(final["tova"][kh])


def test_quest_reads_what_the_reference_reads_at_every_decode_step():
  q, k, v, valid = _pattern()
  settings = bc.Quest(budget=6, page_size=3)  # 2 pages of 3 per decode step out of up to 5
  out, caches = _run(settings(_cfg(), B, capacity=P + DECODE), q, k, v, valid)
  ref_out, ref_reads = reference.quest_reference(q, k, v, valid, STEPS, page_size=3, pages_read=2)
  np.testing.assert_allclose(out[valid], ref_out[valid], atol=1e-5, rtol=0)
  read_before = np.zeros((B, K), int)
  for step, cache in enumerate(caches[1:]):
    read_now = np.asarray(cache.tokens_read())[0]
    expected = np.array([[len(ref_reads[step][b][kh]) for kh in range(K)] for b in range(B)])
    np.testing.assert_array_equal(read_now - read_before, expected, err_msg=f"decode step {step}")
    read_before = read_now
  visible = np.asarray(caches[-1].tokens_visible())[0]
  assert (read_before < visible).all()  # the budget really cut reads
  np.testing.assert_array_equal(np.asarray(caches[-1].decode_steps_B), [DECODE, DECODE - 1])
  np.testing.assert_allclose(np.asarray(caches[-1].mean_tokens_read()),
                             read_before.mean(1) / np.array([DECODE, DECODE - 1]))
  assert int(caches[-1].live_bytes()) == valid.sum() * K * 2 * D * 4  # Quest keeps everything


def test_select_pages_matches_a_brute_force_ranking():
  rng = np.random.RandomState(3)
  b, pages, g = 3, 7, H // K
  q = rng.normal(size=(b, H, D)).astype(np.float32)
  lo = rng.normal(size=(b, pages, K, D)).astype(np.float32)
  hi = lo + rng.uniform(0, 2, size=lo.shape).astype(np.float32)
  filled = rng.uniform(size=(b, pages)) < 0.8
  filled[:, 4] = True
  chosen = np.asarray(bc.select_pages(jnp.asarray(q), jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(filled),
                                      current_page=4, pages_read=3))
  for row in range(b):
    for kh in range(K):
      bound = {p: sum(float(np.sum(np.maximum(q[row, h] * lo[row, p, kh], q[row, h] * hi[row, p, kh])))
                      for h in range(kh * g, (kh + 1) * g)) for p in range(pages) if filled[row, p] and p != 4}
      expected = {4, *sorted(bound, key=lambda p: -bound[p])[:2]}
      assert set(np.flatnonzero(chosen[row, kh])) == expected
