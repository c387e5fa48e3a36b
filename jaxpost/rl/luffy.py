"""LUFFY: one rollout of each group is the whole demonstration, advantages r - mean over all G, and the
demonstration tokens get the shaped, unclipped loss (SPEC §4)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxpost.losses import GRPOConfig, LUFFYConfig, group_advantages, is_prefixed_rollout, make_luffy_loss
from jaxpost.rl.algorithm import Algorithm, register


@dataclasses.dataclass(frozen=True, kw_only=True)
class LUFFYMethod:
  """The first rollout of each group is the whole demonstration; advantages r - mean over all G (SPEC §4)."""

  needs_demonstrations: bool = True

  def prefix_lengths(self, rng, demo_lens_N, step, group_size):
    return np.where(np.asarray(is_prefixed_rollout(len(demo_lens_N), group_size, 1)), demo_lens_N, 0)

  def advantages(self, rewards_N, prefix_mask_NxC, group_size):
    return np.asarray(group_advantages(jnp.asarray(rewards_N), group_size, estimator="dr_grpo"))


@register("luffy")
def build(policy: GRPOConfig, options) -> Algorithm:
  """options: LUFFYConfig's fields (gamma)."""
  return Algorithm(name="luffy", method=LUFFYMethod(), loss_fn=make_luffy_loss(LUFFYConfig(**options, policy=policy)))
