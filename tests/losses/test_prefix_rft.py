"""Prefix-RFT pieces (issue 7 acceptance) and the LUFFY shaped term, against hand-worked values and brute force."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import luffy, prefix_rft
from jaxpost.losses.grpo import GRPOConfig
from jaxpost.losses.logprobs import completion_logps
from tests.losses import fakes
from tests.losses.grpo_reference import reference_loss

CFG = prefix_rft.PrefixRFTConfig()


@pytest.mark.parametrize("step,want", [(0, 0.95), (250, 0.5), (500, 0.05), (501, 0.05), (10_000, 0.05),
                                       (125, 0.05 + 0.5 * (1 + math.cos(math.pi / 4)) * 0.9)])
def test_schedule_values(step, want):
  assert float(prefix_rft.prefix_low(step, CFG)) == pytest.approx(want, abs=1e-6)
  assert float(jax.jit(prefix_rft.prefix_low, static_argnums=1)(jnp.int32(step), CFG)) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("step", [0, 250, 500, 900])
def test_prefix_lengths_within_bounds(step):
  cfg = prefix_rft.PrefixRFTConfig(min_prefix_len=3)
  demo_lens = np.array([1, 2, 3, 4, 5, 10, 37, 100, 0, 64] * 20)
  lens = np.asarray(prefix_rft.sample_prefix_lengths(jax.random.key(step), jnp.asarray(demo_lens), step, cfg))
  low = float(prefix_rft.prefix_low(step, cfg))
  lo = np.floor(low * demo_lens - 1e-4).clip(min=3)
  hi = np.floor(0.95 * demo_lens + 1e-4).clip(min=3)
  cap = np.maximum(demo_lens - 1, 0)
  assert np.all(lens >= np.minimum(lo, cap)) and np.all(lens <= np.minimum(hi, cap))
  assert np.all(lens <= cap) and np.all(lens >= 0)
  long = demo_lens >= 4
  assert np.all(lens[long] >= 3)
  if step == 0:  # low_0 = high: the length is deterministic
    np.testing.assert_array_equal(lens, np.minimum(np.floor(0.95 * demo_lens).clip(min=3), cap))
  if step >= 500:  # the range is wide: lengths actually vary
    assert len(set(lens[demo_lens == 100].tolist())) > 5


def test_hybrid_completions_and_prefix_mask_aligned():
  demos = [[5, 6, 7, 8, 9], [3, 4], [1, 2, 3]]
  prefix_lens = [3, 0, 2]
  continuations = [[10, 11], [12, 13, 14], []]
  demo_arr = np.zeros((3, 5), np.int32)
  cont_arr, cont_mask = np.zeros((3, 3), np.int32), np.zeros((3, 3), np.int32)
  for i, (d, c) in enumerate(zip(demos, continuations)):
    demo_arr[i, :len(d)] = d
    cont_arr[i, :len(c)], cont_mask[i, :len(c)] = c, 1
  out = jax.jit(prefix_rft.build_hybrid_completions, static_argnames=("width", "pad_id"))(
      jnp.asarray(demo_arr), jnp.asarray(prefix_lens), jnp.asarray(cont_arr), jnp.asarray(cont_mask), width=6,
      pad_id=0)
  for i in range(3):
    want = demos[i][:prefix_lens[i]] + continuations[i]
    n = len(want)
    np.testing.assert_array_equal(out["completion_tokens"][i], want + [0] * (6 - n))
    np.testing.assert_array_equal(out["completion_mask"][i], [1] * n + [0] * (6 - n))
    np.testing.assert_array_equal(out["prefix_mask"][i], [1] * prefix_lens[i] + [0] * (6 - prefix_lens[i]))
    # the prefix_mask picks out exactly the demonstration prefix
    np.testing.assert_array_equal(np.asarray(out["completion_tokens"][i])[np.asarray(out["prefix_mask"][i]) == 1],
                                  demos[i][:prefix_lens[i]])


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.7, 1.0])
def test_entropy_selection_keeps_exactly_the_top_fraction(fraction):
  rng = np.random.default_rng(0)
  entropy = rng.integers(0, 4, size=(4, 9)).astype(np.float32)  # many ties
  prefix_mask = np.zeros((4, 9), bool)
  for i, n in enumerate([5, 0, 9, 3]):
    prefix_mask[i, :n] = True
  keep = np.asarray(jax.jit(prefix_rft.select_high_entropy_prefix_tokens, static_argnums=2)(
      jnp.asarray(entropy), jnp.asarray(prefix_mask), fraction))
  n = prefix_mask.sum()
  k = math.ceil(round(fraction * n, 9))
  assert keep.sum() == k and not np.any(keep & ~prefix_mask)
  # Brute force: sort prefix tokens by (-entropy, row-major index), keep the first k.
  cands = sorted((-entropy[i, j], i * 9 + j) for i in range(4) for j in range(9) if prefix_mask[i, j])
  want = np.zeros(36, bool)
  want[[idx for _, idx in cands[:k]]] = True
  np.testing.assert_array_equal(keep.reshape(-1), want)


def test_advantages_on_a_hand_worked_group():
  # Two groups of 4; rollout 0 of each is prefixed (prefix = its first 2 tokens).
  rewards = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
  is_prefixed = jnp.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
  prefix_mask = jnp.zeros((8, 4), jnp.int32).at[0, :2].set(1).at[4, :2].set(1)
  paper = prefix_rft.prefix_rft_advantages(rewards, is_prefixed, prefix_mask, 4)
  # Group 1: on-policy mean 1/3; group 2: on-policy mean 1.
  want_rows = np.array([2 / 3, -1 / 3, 2 / 3, -1 / 3, -1.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(paper, np.repeat(want_rows[:, None], 4, 1), rtol=1e-6)
  released = np.asarray(prefix_rft.prefix_rft_advantages(rewards, is_prefixed, prefix_mask, 4, mode="released"))
  np.testing.assert_allclose(released[0], [2 / 3, 2 / 3, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(released[4], [-1.0, -1.0, 0.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(released[[1, 2, 3, 5, 6, 7]], np.asarray(paper)[[1, 2, 3, 5, 6, 7]], rtol=1e-6)


def _kernel_inputs(seed=0):
  rng = np.random.default_rng(seed)
  b, c = 4, 6
  logps = np.log(rng.uniform(0.05, 0.95, (b, c))).astype(np.float32)
  old = (logps + rng.normal(scale=0.3, size=(b, c))).astype(np.float32)
  mask = (np.arange(c)[None] < np.array([6, 5, 4, 6])[:, None]).astype(np.int32)
  prefix = np.zeros((b, c), np.int32)
  prefix[0, :4], prefix[3, :5] = 1, 1
  entropy = rng.uniform(0, 2, (b, c)).astype(np.float32)
  adv = rng.normal(size=b).astype(np.float32)
  return logps, old, adv, mask, prefix, entropy


def test_prefix_rft_loss_zeroes_unselected_prefix_tokens():
  logps, old, adv, mask, prefix, entropy = _kernel_inputs()
  cfg = prefix_rft.PrefixRFTConfig(top_entropy_fraction=0.25)
  f = lambda lp: prefix_rft.prefix_rft_policy_loss(lp, old, adv, mask, prefix, entropy, cfg=cfg)
  (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(logps)
  # 9 prefix tokens -> the top ceil(2.25) = 3 by entropy keep their advantage.
  flat = [(-entropy[i, j], i, j) for i in range(4) for j in range(6) if prefix[i, j]]
  kept = {(i, j) for _, i, j in sorted(flat)[:3]}
  adv_tok = np.repeat(adv[:, None], 6, 1)
  for i in range(4):
    for j in range(6):
      if prefix[i, j] and (i, j) not in kept:
        adv_tok[i, j] = 0.0
  want, want_grad, _, _ = reference_loss(logps, old, adv_tok, mask, loss_type="dr_grpo")
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
  assert float(metrics["prefix/n_tokens"]) == 9 and float(metrics["prefix/n_trained"]) == 3
  unselected = prefix.astype(bool) & ~np.isin(np.arange(24).reshape(4, 6), [i * 6 + j for i, j in kept])
  assert not np.any(np.asarray(grad)[unselected])


def test_make_prefix_rft_loss_binds_the_kernel():
  params = fakes.init_params(7)
  rng = np.random.default_rng(7)
  batch = {"prompt_tokens": jnp.asarray(rng.integers(1, 11, (2, 3))), "prompt_mask": jnp.ones((2, 3), jnp.int32),
           "completion_tokens": jnp.asarray(rng.integers(1, 11, (2, 5))),
           "completion_mask": jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
           "prefix_mask": jnp.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]),
           "advantages": jnp.array([[0.5] * 5, [-1.0] * 5])}
  loss, metrics = jax.jit(lambda p, b: prefix_rft.make_prefix_rft_loss()(fakes.bind(p), b, None))(params, batch)
  logps, entropy = jax.jit(lambda p, b: completion_logps(fakes.bind(p), b))(params, batch)
  want, _ = prefix_rft.prefix_rft_policy_loss(logps, logps, batch["advantages"], batch["completion_mask"],
                                              batch["prefix_mask"], entropy)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(metrics["prefix/n_trained"]) == 1  # ceil(0.2 * 3)


def test_luffy_demo_gradient_is_the_shaped_formula():
  logps, old, adv, mask, demo, _ = _kernel_inputs(1)
  gamma = 0.1
  cfg = luffy.LUFFYConfig(gamma=gamma, policy=GRPOConfig(loss_type="dr_grpo"))
  f = lambda lp: luffy.luffy_policy_loss(lp, old, adv, mask, demo, cfg=cfg)
  (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(logps)
  b, c = mask.shape
  p = np.exp(logps.astype(np.float64))
  is_demo = demo.astype(bool) & mask.astype(bool)
  # d/dlogp of -A p/(p+gamma), with the dr_grpo weight 1/(B*C): -A * gamma * p / (p + gamma)^2 / (B*C).
  want_demo_grad = -adv[:, None] * gamma * p / (p + gamma) ** 2 / (b * c)
  np.testing.assert_allclose(np.asarray(grad)[is_demo], want_demo_grad[is_demo], rtol=1e-5)
  # On-policy tokens: the clipped GRPO term, same aggregation.
  on_mask = mask * (1 - demo)
  want_on, want_on_grad, _, _ = reference_loss(logps, old, adv, on_mask, loss_type="dr_grpo")
  np.testing.assert_allclose(np.asarray(grad)[on_mask == 1], want_on_grad[on_mask == 1], rtol=1e-4, atol=1e-7)
  demo_value = np.sum(np.where(is_demo, -adv[:, None] * p / (p + gamma), 0.0)) / (b * c)
  np.testing.assert_allclose(loss, want_on + demo_value, rtol=1e-5)
  assert float(metrics["demo/n_tokens"]) == is_demo.sum()


@pytest.mark.parametrize("kwargs,match", [(dict(top_entropy_fraction=0.0), "top_entropy_fraction"),
                                          (dict(advantage_mode="both"), "advantage_mode"),
                                          (dict(low_start=0.99), "low_start"), (dict(schedule_steps=0), "schedule")])
def test_config_validates(kwargs, match):
  with pytest.raises(ValueError, match=match):
    prefix_rft.PrefixRFTConfig(**kwargs)
  with pytest.raises(ValueError, match="gamma"):
    luffy.LUFFYConfig(gamma=0.0)


def test_is_prefixed_rollout_marks_the_first_n_of_each_group():
  np.testing.assert_array_equal(prefix_rft.is_prefixed_rollout(6, 3, 1), [1, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(prefix_rft.is_prefixed_rollout(4, 4, 2), [1, 1, 0, 0])
  with pytest.raises(ValueError, match="n_prefix"):
    prefix_rft.is_prefixed_rollout(4, 4, 5)
