"""Group advantages vs a per-group Python loop (torch std, Bessel-corrected)."""

import jax
import numpy as np
import pytest

from jaxpost.losses.advantages import group_advantages
from tests.losses.grpo_reference import reference_advantages

CASES = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "none"), ("rloo", "none"),
         ("rloo", "group"), ("rloo", "batch")]


@pytest.mark.parametrize("estimator,scale", CASES)
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_matches_reference_on_random_rewards(estimator, scale, group_size):
  rewards = np.random.default_rng(group_size).normal(size=8).astype(np.float32)
  fn = jax.jit(lambda r: group_advantages(r, group_size, estimator=estimator, eps=1e-4, scale=scale))
  np.testing.assert_allclose(fn(rewards), reference_advantages(rewards, group_size, estimator, 1e-4, scale), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_all_equal_rewards_give_zero_never_nan(estimator):
  rewards = np.array([0.1, 0.1, 0.1, 1.0, 1.0, 1.0], np.float32)
  adv = group_advantages(rewards, 3, estimator=estimator)
  np.testing.assert_array_equal(adv, np.zeros(6))


def test_hand_worked_group():
  # Group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3); rloo baseline for a 1 is 1/3.
  adv = group_advantages(np.array([1.0, 0.0, 0.0, 1.0]), 4, eps=0.0)
  np.testing.assert_allclose(adv, [0.5 * np.sqrt(3), -0.5 * np.sqrt(3), -0.5 * np.sqrt(3), 0.5 * np.sqrt(3)], rtol=1e-6)
  np.testing.assert_allclose(group_advantages(np.array([1.0, 0.0, 0.0, 1.0]), 4, estimator="rloo"),
                             [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)
  # A group of one: mean 0, std 1.
  np.testing.assert_allclose(group_advantages(np.array([0.7, 0.2]), 1, eps=0.0), [0.7, 0.2], rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(estimator="ppo"), "estimator"), (dict(scale="global"), "scale"),
    (dict(estimator="dr_grpo", scale="group"), "dr_grpo"), (dict(group_size=3), "multiple"),
    (dict(group_size=0), "group_size")])
def test_bad_arguments_raise(kwargs, match):
  kwargs = {"group_size": 2, **kwargs}
  with pytest.raises(ValueError, match=match):
    group_advantages(np.zeros(4, np.float32), kwargs.pop("group_size"), **kwargs)
