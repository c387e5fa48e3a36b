"""Group-relative advantages from per-completion rewards (SPEC §3).

Rewards are laid out group by group: completions [g*G, (g+1)*G) answer prompt g.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

ESTIMATORS = ("grpo", "dr_grpo", "rloo")
SCALES = ("group", "batch", "none")


def group_advantages(rewards_B: Array, group_size: int, *, estimator: str = "grpo", eps: float = 1e-4,
                     scale: str | None = None) -> Array:
  """Advantages [B] (float32), one per completion.

  - `grpo`: (r - mean_g) / (std + eps). std is the unbiased (Bessel) std of the group (`scale="group"`, the
    default; TRL `scale_rewards="group"`, verl `norm_adv_by_std_in_grpo=True` with eps 1e-6), of the whole
    batch (`"batch"`, TRL `scale_rewards="batch"`) or 1 without eps (`"none"`, TRL `scale_rewards="none"`).
  - `dr_grpo`: r - mean_g, never scaled (Dr.GRPO; verl `norm_adv_by_std_in_grpo=False`). Defaults to "none".
  - `rloo`: r - mean of the other G-1 members = G/(G-1) * (r - mean_g) (verl `rloo`). Defaults to "none";
    `scale` may add the group/batch std division.
  A group of one has baseline 0 and std 1 (verl). All-equal rewards give exact zeros, never NaN.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"group_advantages: estimator must be one of {ESTIMATORS}, got {estimator!r}")
  if scale is None:
    scale = "group" if estimator == "grpo" else "none"
  if scale not in SCALES:
    raise ValueError(f"group_advantages: scale must be one of {SCALES}, got {scale!r}")
  if estimator == "dr_grpo" and scale != "none":
    raise ValueError(f"group_advantages: dr_grpo is unscaled by definition; got scale={scale!r} "
                     "(use estimator='grpo' to scale)")
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_advantages: group_size must be a positive int, got {group_size!r}")
  (batch,) = rewards_B.shape
  if batch % group_size:
    raise ValueError(f"group_advantages: batch {batch} is not a multiple of group_size {group_size}")
  rewards_NxG = rewards_B.astype(jnp.float32).reshape(batch // group_size, group_size)

  if group_size == 1:
    centred_NxG = rewards_NxG
  else:
    mean_Nx1 = jnp.mean(rewards_NxG, axis=1, keepdims=True)
    all_equal_Nx1 = jnp.max(rewards_NxG, axis=1, keepdims=True) == jnp.min(rewards_NxG, axis=1, keepdims=True)
    centred_NxG = jnp.where(all_equal_Nx1, 0.0, rewards_NxG - mean_Nx1)  # exact zeros despite mean rounding
    if estimator == "rloo":
      centred_NxG = centred_NxG * (group_size / (group_size - 1))

  if scale == "none":
    return centred_NxG.reshape(batch)
  if scale == "group":
    std = jnp.std(rewards_NxG, axis=1, ddof=1, keepdims=True) if group_size > 1 else 1.0
  else:
    std = jnp.std(rewards_NxG, ddof=1) if batch > 1 else 1.0
  return (centred_NxG / (std + eps)).reshape(batch)
