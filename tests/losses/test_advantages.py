"""Group advantages vs a per-group Python loop (torch std, Bessel-corrected)."""

import jax
import numpy as np
import pytest
import torch

from jaxpost.losses.advantages import group_advantages


def _reference(rewards, g, estimator, eps, scale):
  """Straightforward loop over groups, written from the formulas."""
  r = torch.tensor(rewards, dtype=torch.float64)
  out = torch.zeros_like(r)
  batch_std = r.std() if len(r) > 1 else torch.tensor(1.0, dtype=torch.float64)
  for start in range(0, len(r), g):
    grp = r[start:start + g]
    for i in range(len(grp)):
      if g == 1:
        baseline = 0.0
      elif estimator == "rloo":
        baseline = (grp.sum() - grp[i]) / (g - 1)
      else:
        baseline = grp.mean()
      a = grp[i] - baseline
      if scale == "group":
        a = a / ((grp.std() if g > 1 else 1.0) + eps)
      elif scale == "batch":
        a = a / (batch_std + eps)
      out[start + i] = a
  return out.numpy()


CASES = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "none"), ("rloo", "none"),
         ("rloo", "group"), ("rloo", "batch")]


@pytest.mark.parametrize("estimator,scale", CASES)
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_matches_reference_on_random_rewards(estimator, scale, group_size):
  rewards = np.random.default_rng(group_size).normal(size=8).astype(np.float32)
  fn = jax.jit(lambda r: group_advantages(r, group_size, estimator=estimator, eps=1e-4, scale=scale))
  np.testing.assert_allclose(fn(rewards), _reference(rewards, group_size, estimator, 1e-4, scale), rtol=1e-5,
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
