"""GRPO-family kernels vs the independent per-row torch reference: value, gradient and clip metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import grpo
from jaxpost.losses.advantages import group_advantages
from jaxpost.losses.logprobs import completion_logps
from tests.losses import fakes
from tests.losses.grpo_reference import reference_advantages, reference_loss

B, C = 6, 7


def _inputs(seed=0, *, spread=0.4):
  rng = np.random.default_rng(seed)
  logps = np.log(rng.uniform(0.05, 0.95, size=(B, C))).astype(np.float32)
  old = (logps + rng.normal(scale=spread, size=(B, C))).astype(np.float32)
  ref = (logps + rng.normal(scale=1.0, size=(B, C))).astype(np.float32)
  adv = (np.abs(rng.normal(size=B)) * np.array([1, -1, 0, 1, -1, 1])).astype(np.float32)  # both signs and a zero
  lengths = [7, 4, 1, 0, 5, 3]  # row 3 fully masked
  mask = (np.arange(C)[None] < np.array(lengths)[:, None]).astype(np.int32)
  entropy = rng.uniform(0.1, 2.0, size=(B, C)).astype(np.float32)
  return dict(logps=logps, old_logps=old, advantages=adv, mask=mask, ref_logps=ref, entropy=entropy)


def _jax_loss_and_grads(x, **kwargs):
  def f(logps, entropy):
    return grpo.policy_loss(logps, x["old_logps"], x["advantages"], x["mask"], ref_logps=x["ref_logps"],
                            entropy=entropy, **kwargs)

  (loss, metrics), (g_logps, g_entropy) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
      x["logps"], x["entropy"])
  return loss, g_logps, g_entropy, metrics


def _check(x, **kwargs):
  loss, g_logps, g_entropy, metrics = _jax_loss_and_grads(x, **kwargs)
  want_loss, want_g, want_g_ent, fractions = reference_loss(
      x["logps"], x["old_logps"], x["advantages"], x["mask"], ref_logps=x["ref_logps"], entropy=x["entropy"],
      **kwargs)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_logps, want_g, rtol=1e-4, atol=1e-6)
  if want_g_ent is not None:
    np.testing.assert_allclose(g_entropy, want_g_ent, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["clip_frac/low"], fractions["low"], atol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac/high"], fractions["high"], atol=1e-6)
  return metrics


@pytest.mark.parametrize("importance_level", grpo.IMPORTANCE_LEVELS)
@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_loss_types_and_importance_levels_match_reference(loss_type, importance_level):
  x = _inputs(1, spread=0.8)
  kwargs = dict(loss_type=loss_type, importance_level=importance_level)
  if loss_type == "cispo":
    kwargs["epsilon_high"] = 1.3  # the ratio cap itself
  metrics = _check(x, **kwargs)
  assert metrics["clip_frac/region"] > 0  # the random ratios do reach the clip regions
  if loss_type != "cispo" and importance_level == "token":
    assert metrics["clip_frac/low"] > 0 and metrics["clip_frac/high"] > 0


@pytest.mark.parametrize("kl_estimator", grpo.KL_ESTIMATORS)
def test_kl_estimators_match_reference(kl_estimator):
  x = _inputs(2)
  x["ref_logps"][0, :3] = x["logps"][0, :3] + np.array([12.0, -25.0, 3.0])  # hits low_var_kl's clamps
  metrics = _check(x, beta=0.1, kl_estimator=kl_estimator, epsilon_high=0.28)
  d = (x["ref_logps"] - x["logps"]).astype(np.float64)
  per_token = {"k1": -d, "k2": 0.5 * d * d, "k3": np.exp(d) - d - 1,
               "low_var_kl": np.clip(np.exp(np.clip(d, -20, 20)) - np.clip(d, -20, 20) - 1, -10, 10)}[kl_estimator]
  m = x["mask"].astype(bool)
  np.testing.assert_allclose(metrics["kl"], per_token[m].mean(), rtol=1e-5)


def test_dual_clip_and_entropy_bonus_match_reference():
  x = _inputs(3, spread=1.5)
  x["advantages"] = -np.abs(x["advantages"])
  metrics = _check(x, clip_ratio_c=3.0, entropy_coef=0.01, loss_type="bnpo")
  assert metrics["clip_frac/dual"] > 0
  ratio = np.exp(x["logps"] - x["old_logps"])
  m = x["mask"].astype(bool) & (x["advantages"][:, None] < 0)
  np.testing.assert_allclose(metrics["clip_frac/dual"], (ratio[m] > 3.0).sum() / x["mask"].sum(), atol=1e-6)


def test_dr_grpo_max_completion_length_and_dapo_normalizer():
  x = _inputs(4)
  _check(x, loss_type="dr_grpo", max_completion_length=16)
  _check(x, loss_type="dapo", token_normalizer=50.0)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("group_size", [1, 3])
def test_advantage_estimators_end_to_end(estimator, group_size):
  x = _inputs(5)
  rewards = np.random.default_rng(group_size).integers(0, 3, size=B).astype(np.float32)
  x["advantages"] = np.asarray(group_advantages(jnp.asarray(rewards), group_size, estimator=estimator))
  scale = "group" if estimator == "grpo" else "none"
  np.testing.assert_allclose(x["advantages"], reference_advantages(rewards, group_size, estimator, 1e-4, scale),
                             rtol=1e-5, atol=1e-6)
  _check(x, loss_type="dr_grpo")


def test_all_equal_rewards_give_zero_loss_and_gradient():
  x = _inputs(6)
  x["advantages"] = np.asarray(group_advantages(jnp.full((B,), 0.5), 3))
  for loss_type in grpo.LOSS_TYPES:
    kwargs = dict(epsilon_high=2.0) if loss_type == "cispo" else {}
    loss, g_logps, _, metrics = _jax_loss_and_grads(x, loss_type=loss_type, **kwargs)
    assert float(loss) == 0.0 and not np.any(g_logps)
    assert all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("importance_level", grpo.IMPORTANCE_LEVELS)
def test_fully_masked_batch_is_finite_and_zero(loss_type, importance_level):
  x = _inputs(7)
  x["mask"] = np.zeros_like(x["mask"])
  kwargs = dict(epsilon_high=2.0) if loss_type == "cispo" else {}
  loss, g_logps, g_entropy, metrics = _jax_loss_and_grads(
      x, loss_type=loss_type, importance_level=importance_level, beta=0.1, entropy_coef=0.01, **kwargs)
  assert float(loss) == 0.0 and not np.any(g_logps) and not np.any(g_entropy)
  assert all(np.isfinite(v) for v in metrics.values())


def test_sequence_level_with_per_token_advantages_constant_along_rows_equals_per_row():
  x = _inputs(8)
  per_row = _jax_loss_and_grads(x, importance_level="sequence")
  x["advantages"] = np.repeat(x["advantages"][:, None], C, axis=1)
  per_token = _jax_loss_and_grads(x, importance_level="sequence")
  np.testing.assert_allclose(per_token[0], per_row[0], rtol=1e-6)
  np.testing.assert_allclose(per_token[1], per_row[1], rtol=1e-6, atol=1e-8)


def test_per_token_advantages_match_reference():
  x = _inputs(9)
  x["advantages"] = np.random.default_rng(9).normal(size=(B, C)).astype(np.float32)
  _check(x, loss_type="bnpo")


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss_type="ppo"), "loss_type"), (dict(importance_level="group"), "importance_level"),
    (dict(kl_estimator="k4"), "kl_estimator"), (dict(loss_type="cispo"), "ratio cap"),
    (dict(clip_ratio_c=0.5), "clip_ratio_c"), (dict(epsilon_low=1.0), "epsilon_low"), (dict(beta=-1.0), "beta")])
def test_config_validates(kwargs, match):
  with pytest.raises(ValueError, match=match):
    grpo.GRPOConfig(**kwargs)


def test_beta_without_ref_logps_raises():
  x = _inputs(0)
  with pytest.raises(ValueError, match="ref_logps"):
    grpo.policy_loss(x["logps"], x["old_logps"], x["advantages"], x["mask"], beta=0.1)


def test_make_grpo_loss_one_update_is_the_reinforce_gradient():
  """Without old_logps the ratio is 1: grpo loss = -mean_i A_i over non-empty rows' share, gradient REINFORCE."""
  params = fakes.init_params(5)
  batch = fakes.rl_batch()
  loss_fn = grpo.make_grpo_loss(grpo.GRPOConfig(temperature=0.9))
  (loss, metrics), grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(fakes.bind(p), batch, None), has_aux=True))(
      params)
  mask = np.asarray(batch["completion_mask"]).astype(bool)
  adv = np.asarray(batch["advantages"])
  np.testing.assert_allclose(loss, -np.sum(adv * mask.any(-1)) / 4, rtol=1e-6)

  def reinforce(p):
    logps, _ = completion_logps(fakes.bind(p), batch, temperature=0.9)
    per_row = jnp.sum(logps * mask, -1) / jnp.maximum(mask.sum(-1), 1)
    return -jnp.mean(adv * per_row)

  want = jax.jit(jax.grad(reinforce))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, want)
  assert float(metrics["ratio/mean"]) == pytest.approx(1.0) and float(metrics["clip_frac/region"]) == 0.0


def test_make_grpo_loss_equals_kernel_on_completion_logps():
  params = fakes.init_params(6)
  batch = fakes.rl_batch(1)
  rng = np.random.default_rng(1)
  batch["old_logps"] = jnp.asarray(np.log(rng.uniform(0.05, 0.5, (4, 4))), jnp.float32)
  batch["ref_logps"] = batch["old_logps"] - 0.1
  cfg = grpo.GRPOConfig(loss_type="dapo", beta=0.05, epsilon_high=0.28)
  loss, metrics = jax.jit(lambda p, b: grpo.make_grpo_loss(cfg)(fakes.bind(p), b, None))(params, batch)
  logps, entropy = jax.jit(lambda p, b: completion_logps(fakes.bind(p), b))(params, batch)
  want, _, _, _ = reference_loss(logps, batch["old_logps"], batch["advantages"], batch["completion_mask"],
                                 ref_logps=np.asarray(batch["ref_logps"]), loss_type="dapo", beta=0.05,
                                 epsilon_high=0.28)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  m = np.asarray(batch["completion_mask"]).astype(bool)
  np.testing.assert_allclose(metrics["entropy"], np.asarray(entropy)[m].mean(), rtol=1e-5)
