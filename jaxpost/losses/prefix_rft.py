"""Prefix-RFT (arXiv 2507.01679, SPEC §4): rollouts that start from a demonstration prefix, trained with the
GRPO kernels; only the highest-entropy prefix tokens keep their advantage.

Pieces, in data-path order: `prefix_low` / `sample_prefix_lengths` (how long a prefix), `build_hybrid_completions`
(prefix ++ continuation in the RL layout, with `prefix_mask`), `prefix_rft_advantages` (on-policy baseline,
per token), `select_high_entropy_prefix_tokens`, and `prefix_rft_policy_loss` / `make_prefix_rft_loss`, which
call `grpo.policy_loss` with the unselected prefix tokens' advantages set to 0.
"""

from __future__ import annotations

import dataclasses
import fractions
from typing import Mapping

import jax
import jax.numpy as jnp

from jaxpost.losses.counts import CountedLoss, counts_in
from jaxpost.losses.grpo import GRPOConfig, policy_loss, rl_batch_counts
from jaxpost.losses.logprobs import completion_logps, masked_count, masked_mean

Array = jax.Array

ADVANTAGE_MODES = ("paper", "released")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefixRFTConfig:
  """Paper defaults: 1 of G rollouts prefixed; l ~ U[low_t, 0.95] with low_t cosine 0.95 -> 0.05 over 500 steps;
  top 20% prefix tokens by entropy trained; Dr.GRPO aggregation; no KL. The loss reads top_entropy_fraction and
  policy; the rollout side reads the rest (is_prefixed_rollout, sample_prefix_lengths, prefix_rft_advantages)."""

  n_prefix: int = 1
  low_start: float = 0.95
  low_end: float = 0.05
  high: float = 0.95
  schedule_steps: int = 500
  min_prefix_len: int = 1
  top_entropy_fraction: float = 0.2
  advantage_mode: str = "paper"
  policy: GRPOConfig = dataclasses.field(default_factory=lambda: GRPOConfig(loss_type="dr_grpo"))

  def __post_init__(self):
    if not 0.0 <= self.low_end <= self.low_start <= self.high <= 1.0:
      raise ValueError(f"PrefixRFTConfig needs 0 <= low_end <= low_start <= high <= 1, got low_end={self.low_end}, "
                       f"low_start={self.low_start}, high={self.high}")
    if self.n_prefix < 0 or self.schedule_steps < 1 or self.min_prefix_len < 0:
      raise ValueError(f"PrefixRFTConfig: n_prefix >= 0, schedule_steps >= 1, min_prefix_len >= 0 needed, got "
                       f"{self.n_prefix}, {self.schedule_steps}, {self.min_prefix_len}")
    if not 0.0 < self.top_entropy_fraction <= 1.0:
      raise ValueError(f"PrefixRFTConfig.top_entropy_fraction must be in (0, 1], got {self.top_entropy_fraction}")
    if self.advantage_mode not in ADVANTAGE_MODES:
      raise ValueError(f"PrefixRFTConfig.advantage_mode must be one of {ADVANTAGE_MODES}, got {self.advantage_mode!r}")


def prefix_low(step, cfg: PrefixRFTConfig) -> Array:
  """low_t = low_end + (1 + cos(pi * min(t, T) / T)) / 2 * (low_start - low_end): low_start at 0, low_end from T."""
  progress = jnp.minimum(jnp.asarray(step, jnp.float32), cfg.schedule_steps) / cfg.schedule_steps
  return cfg.low_end + 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) * (cfg.low_start - cfg.low_end)


def is_prefixed_rollout(batch_size: int, group_size: int, n_prefix: int) -> Array:
  """Bool [B]: the first `n_prefix` rollouts of each group of `group_size` start from a demonstration prefix."""
  if batch_size % group_size or not 0 <= n_prefix <= group_size:
    raise ValueError(f"is_prefixed_rollout: need batch_size % group_size == 0 and 0 <= n_prefix <= group_size, got "
                     f"{batch_size}, {group_size}, {n_prefix}")
  return jnp.arange(batch_size) % group_size < n_prefix


def sample_prefix_lengths(rng: Array, demo_lens_B: Array, step, cfg: PrefixRFTConfig) -> Array:
  """floor(l * len), l ~ U[low_t, high], bounded to [min_prefix_len, len - 1] (len - 1 wins; never < 0); int32 [B]."""
  low = prefix_low(step, cfg)
  fraction_B = jax.random.uniform(rng, demo_lens_B.shape, minval=low, maxval=cfg.high)
  lens_B = demo_lens_B.astype(jnp.int32)
  prefix_B = jnp.floor(fraction_B * lens_B).astype(jnp.int32)
  return jnp.maximum(jnp.minimum(jnp.maximum(prefix_B, cfg.min_prefix_len), lens_B - 1), 0)


def build_hybrid_completions(prefix_tokens_BxL: Array, prefix_lens_B: Array, continuation_tokens_BxC: Array,
                             continuation_mask_BxC: Array, *, width: int | None = None,
                             pad_id: int = 0) -> dict[str, Array]:
  """Completions prefix[:len] ++ continuation, right-padded to `width` (default L + C; longer is cut off).

  Returns `completion_tokens`, `completion_mask` and `prefix_mask` [B, width] in the RL layout; rows with
  prefix length 0 are plain on-policy completions. The continuation must be right-padded.
  """
  width = width or prefix_tokens_BxL.shape[1] + continuation_tokens_BxC.shape[1]
  j_1xW = jnp.arange(width)[None]
  plen_Bx1 = prefix_lens_B.astype(jnp.int32)[:, None]
  clen_Bx1 = jnp.sum(continuation_mask_BxC.astype(jnp.int32), axis=1, keepdims=True)
  prefix_BxW = j_1xW < plen_Bx1
  cont_BxW = (j_1xW >= plen_Bx1) & (j_1xW < plen_Bx1 + clen_Bx1)
  from_prefix = jnp.take(prefix_tokens_BxL, jnp.minimum(jnp.arange(width), prefix_tokens_BxL.shape[1] - 1), axis=1)
  cont_idx_BxW = jnp.clip(j_1xW - plen_Bx1, 0, continuation_tokens_BxC.shape[1] - 1)
  from_cont = jnp.take_along_axis(continuation_tokens_BxC, cont_idx_BxW, axis=1)
  tokens_BxW = jnp.where(prefix_BxW, from_prefix, jnp.where(cont_BxW, from_cont, pad_id))
  return {"completion_tokens": tokens_BxW.astype(continuation_tokens_BxC.dtype),
          "completion_mask": (prefix_BxW | cont_BxW).astype(jnp.int32), "prefix_mask": prefix_BxW.astype(jnp.int32)}


def prefix_rft_advantages(rewards_B: Array, is_prefixed_B: Array, prefix_mask_BxC: Array, group_size: int, *,
                          mode: str = "paper") -> Array:
  """Per-token advantages [B, C] against the group's on-policy mean reward (Dr.GRPO style, no std).

  On-policy rollouts: r - mean(on-policy r). Prefixed rollouts, `paper`: r - mean(on-policy r) on every token;
  `released` (the authors' code): r - mean(on-policy r) on prefix tokens and the raw r on the continuation.
  A group with no on-policy member has baseline 0.
  """
  if mode not in ADVANTAGE_MODES:
    raise ValueError(f"prefix_rft_advantages: mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
  (batch,) = rewards_B.shape
  if batch % group_size:
    raise ValueError(f"prefix_rft_advantages: batch {batch} is not a multiple of group_size {group_size}")
  rewards_NxG = rewards_B.astype(jnp.float32).reshape(-1, group_size)
  on_policy_NxG = ~is_prefixed_B.astype(bool).reshape(-1, group_size)
  n_on_Nx1 = jnp.sum(on_policy_NxG, axis=1, keepdims=True)
  baseline_Nx1 = jnp.sum(jnp.where(on_policy_NxG, rewards_NxG, 0.0), axis=1, keepdims=True) / jnp.maximum(n_on_Nx1, 1)
  centred_B = (rewards_NxG - baseline_Nx1).reshape(batch)
  adv_BxC = jnp.broadcast_to(centred_B[:, None], prefix_mask_BxC.shape)
  if mode == "paper":
    return adv_BxC
  continuation_BxC = is_prefixed_B.astype(bool)[:, None] & ~prefix_mask_BxC.astype(bool)
  return jnp.where(continuation_BxC, rewards_B.astype(jnp.float32)[:, None], adv_BxC)


def _ceil_fraction_of(n: Array, fraction: float) -> Array:
  """ceil(fraction * n) exactly in int32, with fraction taken as the nearest p/q, q <= 1000."""
  ratio = fractions.Fraction(fraction).limit_denominator(1000)
  p, q = ratio.numerator, ratio.denominator
  return (n // q) * p + ((n % q) * p + q - 1) // q


def select_high_entropy_prefix_tokens(entropy_BxC: Array, prefix_mask_BxC: Array, top_fraction: float = 0.2) -> Array:
  """Bool [B, C]: the k = ceil(top_fraction * n) highest-entropy of the n prefix tokens, ranked over the batch.

  Exactly k tokens are kept; ties go to the earlier token in row-major order, so the choice is deterministic.
  """
  prefix_N = prefix_mask_BxC.astype(bool).reshape(-1)
  n = jnp.sum(prefix_N.astype(jnp.int32))
  k = _ceil_fraction_of(n, top_fraction)
  key_N = jnp.where(prefix_N, -jax.lax.stop_gradient(entropy_BxC).astype(jnp.float32).reshape(-1), jnp.inf)
  order_N = jnp.argsort(key_N, stable=True)
  rank_N = jnp.zeros_like(order_N).at[order_N].set(jnp.arange(order_N.shape[0]))
  return (prefix_N & (rank_N < k)).reshape(prefix_mask_BxC.shape)


def prefix_rft_policy_loss(logps_BxC: Array, old_logps_BxC: Array, advantages: Array, mask_BxC: Array,
                           prefix_mask_BxC: Array, entropy_BxC: Array, *, cfg: PrefixRFTConfig = PrefixRFTConfig(),
                           ref_logps_BxC: Array | None = None, counts: Mapping[str, Array] | None = None
                           ) -> tuple[Array, dict[str, Array]]:
  """`grpo.policy_loss` with the advantage of every prefix token outside the top-entropy selection set to 0.

  Metrics add prefix/n_tokens, prefix/n_trained and prefix/entropy (mean entropy of the trained prefix tokens).
  """
  prefix_BxC = prefix_mask_BxC.astype(bool) & mask_BxC.astype(bool)
  keep_BxC = select_high_entropy_prefix_tokens(entropy_BxC, prefix_BxC, cfg.top_entropy_fraction)
  adv_BxC = jnp.broadcast_to(advantages[:, None] if advantages.ndim == 1 else advantages, logps_BxC.shape)
  adv_BxC = jnp.where(prefix_BxC & ~keep_BxC, 0.0, adv_BxC)
  loss, metrics = policy_loss(logps_BxC, old_logps_BxC, adv_BxC, mask_BxC, ref_logps=ref_logps_BxC,
                              entropy=entropy_BxC, counts=counts, **cfg.policy.kernel_kwargs())
  metrics.update({"prefix/n_tokens": masked_count(prefix_BxC), "prefix/n_trained": masked_count(keep_BxC),
                  "prefix/entropy": masked_mean(jax.lax.stop_gradient(entropy_BxC), keep_BxC)})
  return loss, metrics


def make_prefix_rft_loss(cfg: PrefixRFTConfig = PrefixRFTConfig()) -> CountedLoss:
  """loss_fn(model, batch, rng) on the RL layout with `prefix_mask` (all zeros when absent) and per-token or
  per-row `advantages` (see `prefix_rft_advantages`). The entropy ranking is over the batch passed in."""

  def loss_fn(model, batch: Mapping[str, Array], rng=None) -> tuple[Array, dict[str, Array]]:
    del rng  # deterministic
    logps_BxC, entropy_BxC = completion_logps(model, batch, temperature=cfg.policy.temperature)
    mask_BxC = batch["completion_mask"]
    return prefix_rft_policy_loss(
        logps_BxC, batch.get("old_logps", jax.lax.stop_gradient(logps_BxC)), batch["advantages"], mask_BxC,
        batch.get("prefix_mask", jnp.zeros_like(mask_BxC)), entropy_BxC, cfg=cfg,
        ref_logps_BxC=batch.get("ref_logps"), counts=counts_in(batch, rl_batch_counts))

  return CountedLoss(loss_fn, rl_batch_counts)

