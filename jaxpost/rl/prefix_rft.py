"""Prefix-RFT (arXiv 2507.01679): `n_prefix` of each group's rollouts continue a scheduled demonstration prefix;
on-policy-baseline advantages; the loss trains the high-entropy prefix tokens (SPEC §4)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxpost.losses import (GRPOConfig, PrefixRFTConfig, is_prefixed_rollout, make_prefix_rft_loss,
                            prefix_rft_advantages, sample_prefix_lengths)
from jaxpost.rl.algorithm import Algorithm, register


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefixRFTMethod:
  """`n_prefix` of each group's rollouts continue a scheduled demonstration prefix (SPEC §4)."""

  cfg: PrefixRFTConfig = PrefixRFTConfig()
  needs_demonstrations: bool = True

  def prefix_lengths(self, rng, demo_lens_N, step, group_size):
    lengths = np.asarray(sample_prefix_lengths(rng, jnp.asarray(demo_lens_N), step, self.cfg))
    prefixed = np.asarray(is_prefixed_rollout(len(demo_lens_N), group_size, self.cfg.n_prefix))
    return np.where(prefixed, lengths, 0)

  def advantages(self, rewards_N, prefix_mask_NxC, group_size):
    prefixed = np.asarray(is_prefixed_rollout(len(rewards_N), group_size, self.cfg.n_prefix))
    return np.asarray(prefix_rft_advantages(jnp.asarray(rewards_N), jnp.asarray(prefixed),
                                            jnp.asarray(prefix_mask_NxC), group_size, mode=self.cfg.advantage_mode))


@register("prefix_rft")
def build(policy: GRPOConfig, options) -> Algorithm:
  """options: PrefixRFTConfig's fields (n_prefix, the prefix schedule, top_entropy_fraction, advantage_mode)."""
  cfg = PrefixRFTConfig(**options, policy=policy)
  return Algorithm(name="prefix_rft", method=PrefixRFTMethod(cfg=cfg), loss_fn=make_prefix_rft_loss(cfg))
