"""GRPO (and its Dr.GRPO / DAPO / GSPO / CISPO variants through `GRPOConfig`): every rollout on-policy, group
advantages (SPEC §3)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxpost.losses import GRPOConfig, group_advantages, make_grpo_loss
from jaxpost.rl.algorithm import Algorithm, register


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOMethod:
  """Every rollout on-policy; advantages by `group_advantages` (SPEC §3)."""

  estimator: str = "grpo"
  scale: str | None = None
  eps: float = 1e-4
  needs_demonstrations: bool = False

  def prefix_lengths(self, rng, demo_lens_N, step, group_size):
    return np.zeros_like(demo_lens_N)

  def advantages(self, rewards_N, prefix_mask_NxC, group_size):
    return np.asarray(group_advantages(jnp.asarray(rewards_N), group_size, estimator=self.estimator,
                                       scale=self.scale, eps=self.eps))


@register("grpo")
def build(policy: GRPOConfig, options) -> Algorithm:
  """options: GRPOMethod's fields (estimator, scale, eps)."""
  return Algorithm(name="grpo", method=GRPOMethod(**options), loss_fn=make_grpo_loss(policy))
