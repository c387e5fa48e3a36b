"""LUFFY (arXiv 2504.14945, SPEC §4): one rollout per group is the whole demonstration (off-policy); its tokens use
the shaped, unclipped term -A * p / (p + gamma), p = exp(logp); on-policy tokens use the usual clipped term.

Advantages come from `group_advantages(rewards, G, estimator="dr_grpo")` over all G rollouts including the
demonstration (r - mean, no std). Demonstration tokens are marked by `prefix_mask` (LUFFY's prefix is the whole
demonstration). Composed from the GRPO blocks: `token_policy_losses` on on-policy tokens, then `regularized_loss`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from jaxpost.losses.counts import CountedLoss, counts_in
from jaxpost.losses.grpo import GRPOConfig, rl_batch_counts, regularized_loss, token_policy_losses
from jaxpost.losses.logprobs import completion_logps, masked_count

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class LUFFYConfig:
  """gamma: policy-shaping constant (paper 0.1). policy: the on-policy term and aggregation; the default is a token
  mean over on- and off-policy tokens together, as LUFFY's objective normalises by their total count."""

  gamma: float = 0.1
  policy: GRPOConfig = dataclasses.field(default_factory=lambda: GRPOConfig(loss_type="bnpo"))

  def __post_init__(self):
    if self.gamma <= 0.0:
      raise ValueError(f"LUFFYConfig.gamma must be > 0, got {self.gamma}")


def luffy_policy_loss(logps_BxC: Array, old_logps_BxC: Array, advantages: Array, mask_BxC: Array,
                      demo_mask_BxC: Array, *, cfg: LUFFYConfig = LUFFYConfig(), ref_logps_BxC: Array | None = None,
                      entropy_BxC: Array | None = None, counts: Mapping[str, Array] | None = None
                      ) -> tuple[Array, dict[str, Array]]:
  """Per token: demonstration -A * p/(p + gamma) (gradient -A * gamma p/(p + gamma)^2 dlogp, no ratio, no clip);
  otherwise the `cfg.policy` GRPO term; then KL / entropy / aggregation as `grpo.regularized_loss`.

  Clip and ratio metrics cover on-policy tokens only; demo/n_tokens counts the demonstration tokens.
  """
  demo_BxC = demo_mask_BxC.astype(bool) & mask_BxC.astype(bool)
  on_policy_BxC = mask_BxC.astype(bool) & ~demo_BxC
  # Demonstration tokens have no behaviour log-probs; a neutral ratio keeps the unused branch finite.
  old_logps_BxC = jnp.where(demo_BxC, jax.lax.stop_gradient(logps_BxC), old_logps_BxC)
  policy = cfg.policy
  on_policy_loss_BxC, clip_metrics = token_policy_losses(
      logps_BxC, old_logps_BxC, advantages, on_policy_BxC, loss_type=policy.loss_type,
      importance_level=policy.importance_level, epsilon_low=policy.epsilon_low, epsilon_high=policy.epsilon_high,
      clip_ratio_c=policy.clip_ratio_c)
  adv_BxC = jnp.broadcast_to(advantages[:, None] if advantages.ndim == 1 else advantages, logps_BxC.shape)
  p_BxC = jnp.exp(logps_BxC)
  demo_loss_BxC = -jax.lax.stop_gradient(adv_BxC) * p_BxC / (p_BxC + cfg.gamma)
  token_loss_BxC = jnp.where(demo_BxC, demo_loss_BxC, on_policy_loss_BxC)
  loss, metrics = regularized_loss(
      token_loss_BxC, mask_BxC, logps_BxC=logps_BxC, loss_type=policy.loss_type,
      max_completion_length=policy.max_completion_length, counts=counts,
      ref_logps_BxC=ref_logps_BxC, beta=policy.beta, kl_estimator=policy.kl_estimator, entropy_BxC=entropy_BxC,
      entropy_coef=policy.entropy_coef)
  return loss, {**metrics, **clip_metrics, "demo/n_tokens": masked_count(demo_BxC)}


def make_luffy_loss(cfg: LUFFYConfig = LUFFYConfig()) -> CountedLoss:
  """loss_fn(model, batch, rng) on the RL layout; `prefix_mask` marks demonstration tokens."""

  def loss_fn(model, batch: Mapping[str, Array], rng=None) -> tuple[Array, dict[str, Array]]:
    del rng  # deterministic
    logps_BxC, entropy_BxC = completion_logps(model, batch, temperature=cfg.policy.temperature)
    return luffy_policy_loss(
        logps_BxC, batch.get("old_logps", jax.lax.stop_gradient(logps_BxC)), batch["advantages"],
        batch["completion_mask"], batch["prefix_mask"], cfg=cfg, ref_logps_BxC=batch.get("ref_logps"),
        entropy_BxC=entropy_BxC, counts=counts_in(batch, rl_batch_counts))

  return CountedLoss(loss_fn, rl_batch_counts)
