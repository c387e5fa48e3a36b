"""The GRPO loss family as pure kernels on per-token arrays (SPEC §3), and its model binding.

Per completion token t of row i: lr = logp - old_logp, r = exp(lr), A the advantage ([B] or per token [B,C]).
Modes match TRL 1.16 `GRPOTrainer._compute_loss` (with `use_bias_correction_kl=False`, `delta=None`, no vLLM
importance correction) and verl 0.9 `core_algos` as named in each docstring. Building blocks are public so that
variants (Prefix-RFT, LUFFY) compose them instead of forking: `token_policy_losses` -> `regularized_loss`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxpost.losses.counts import CountedLoss, counts_in, mean_by
from jaxpost.losses.logprobs import completion_logps, masked_count, masked_mean, masked_sum

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Any], tuple[Array, dict[str, Array]]]

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")
IMPORTANCE_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3", "low_var_kl")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"GRPOConfig.{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOConfig:
  """Options of `policy_loss` (same names and meaning) plus the sampling `temperature` of the model binding.

  For `cispo`, `epsilon_high` is the cap on the ratio itself (TRL semantics, ScaleRL's eps_max, e.g. 5.0);
  MiniMax-M1's `1 + eps_high^IS` corresponds to `epsilon_high = 1 + eps_high^IS`.
  """

  loss_type: str = "grpo"
  importance_level: str = "token"
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  clip_ratio_c: float | None = None
  beta: float = 0.0
  kl_estimator: str = "k3"
  max_completion_length: int | None = None
  entropy_coef: float = 0.0
  temperature: float = 1.0

  def __post_init__(self):
    _check_choice("loss_type", self.loss_type, LOSS_TYPES)
    _check_choice("importance_level", self.importance_level, IMPORTANCE_LEVELS)
    _check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
    if not 0.0 <= self.epsilon_low < 1.0:
      raise ValueError(f"GRPOConfig.epsilon_low must be in [0, 1), got {self.epsilon_low}")
    if self.epsilon_high < 0.0:
      raise ValueError(f"GRPOConfig.epsilon_high must be >= 0, got {self.epsilon_high}")
    if self.loss_type == "cispo" and self.epsilon_high < 1.0:
      raise ValueError(f"GRPOConfig.epsilon_high is the ratio cap for cispo (TRL semantics, e.g. 5.0); "
                       f"got {self.epsilon_high} < 1")
    if self.clip_ratio_c is not None and (self.clip_ratio_c <= 1.0 or self.loss_type == "cispo"):
      raise ValueError(f"GRPOConfig.clip_ratio_c must be None or > 1 (and not with cispo), got {self.clip_ratio_c}")
    if self.beta < 0.0:
      raise ValueError(f"GRPOConfig.beta must be >= 0, got {self.beta}")
    if self.max_completion_length is not None and self.max_completion_length < 1:
      raise ValueError(f"GRPOConfig.max_completion_length must be None or >= 1, got {self.max_completion_length}")
    if self.temperature <= 0.0:
      raise ValueError(f"GRPOConfig.temperature must be > 0, got {self.temperature}")

  def kernel_kwargs(self) -> dict[str, Any]:
    """The fields that are `policy_loss` keyword arguments."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "temperature"}


def kl_penalty(logps_BxC: Array, ref_logps_BxC: Array, estimator: str = "k3") -> Array:
  """Per-token KL(pi || ref) estimate (Schulman's k1/k2/k3), d = ref - logp.

  k1 = -d; k2 = d^2 / 2; k3 = exp(d) - d - 1 unclamped (TRL's only estimator; verl `k3` clamps, use low_var_kl);
  low_var_kl = verl `low_var_kl`/`k3`: d clamped to [-20, 20], result clamped to [-10, 10].
  """
  d_BxC = ref_logps_BxC - logps_BxC
  if estimator == "k1":
    return -d_BxC
  if estimator == "k2":
    return 0.5 * jnp.square(d_BxC)
  if estimator == "k3":
    return jnp.exp(d_BxC) - d_BxC - 1.0
  if estimator == "low_var_kl":
    d_BxC = jnp.clip(d_BxC, -20.0, 20.0)
    return jnp.clip(jnp.exp(d_BxC) - d_BxC - 1.0, -10.0, 10.0)
  raise ValueError(f"kl_penalty: estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def log_importance_ratio(logps_BxC: Array, old_logps_BxC: Array, mask_BxC: Array, importance_level: str) -> Array:
  """Per-token log ratio: `token` lr; `sequence` (GSPO) the row's masked mean of lr, broadcast.

  The sequence level uses GSPO-token's form sg(mean_t lr) + logp - sg(logp): equal in value to TRL's
  `importance_sampling_level="sequence"` and in gradient whenever A is constant along the row (each token gets
  s * dlogp_t, which sums to TRL's s * mean_t dlogp), while also allowing per-token advantages. (verl `gspo`
  has the same form and additionally clamps the log ratio at 10; verl `vanilla` clamps lr to [-20, 20]; neither
  clamp is applied here, as in TRL.)
  """
  lr_BxC = logps_BxC - old_logps_BxC
  if importance_level == "token":
    return lr_BxC
  seq_lr_Bx1 = masked_mean(lr_BxC, mask_BxC, axis=-1)[:, None]
  return jax.lax.stop_gradient(seq_lr_Bx1) + logps_BxC - jax.lax.stop_gradient(logps_BxC)


def _unit_weights(mask_BxC: Array, importance_level: str) -> Array:
  """Weights averaging a per-token flag over tokens (token level) or over non-empty rows (sequence level)."""
  mask_BxC = mask_BxC.astype(jnp.float32)
  if importance_level == "token":
    return mask_BxC / jnp.maximum(jnp.sum(mask_BxC), 1.0)
  row_count_Bx1 = jnp.sum(mask_BxC, axis=-1, keepdims=True)
  n_rows = jnp.sum(row_count_Bx1 > 0)
  return mask_BxC / jnp.maximum(row_count_Bx1, 1.0) / jnp.maximum(n_rows, 1.0)


def token_policy_losses(logps_BxC: Array, old_logps_BxC: Array, advantages: Array, mask_BxC: Array, *,
                        loss_type: str = "grpo", importance_level: str = "token", epsilon_low: float = 0.2,
                        epsilon_high: float = 0.2, clip_ratio_c: float | None = None
                        ) -> tuple[Array, dict[str, Array]]:
  """Per-token policy term [B,C] (before masking/aggregation) and clip/ratio metrics.

  Clipped surrogate (TRL grpo/bnpo/dr_grpo/dapo, verl `vanilla`; with `sequence`, TRL GSPO and verl `gspo`):
    -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A).
  Dual clip (verl `vanilla` with clip_ratio_c = c; off when None): for A < 0, min(that, -A*c).
  cispo (TRL `cispo`): -sg(min(r, epsilon_high)) * A * logp.
  Metrics (over masked tokens; rows weigh equally at sequence level): clip_frac/low (r < 1-eps_low, A < 0),
  clip_frac/high (r > 1+eps_high, A > 0; cispo: r > epsilon_high, A > 0), clip_frac/region (either),
  clip_frac/dual (dual clip active), ratio/min, ratio/mean, ratio/max.
  """
  adv_BxC = jnp.broadcast_to(advantages[:, None] if advantages.ndim == 1 else advantages, logps_BxC.shape)
  adv_BxC = jax.lax.stop_gradient(adv_BxC.astype(jnp.float32))
  old_logps_BxC = jax.lax.stop_gradient(old_logps_BxC)
  ratio_BxC = jnp.exp(log_importance_ratio(logps_BxC, old_logps_BxC, mask_BxC, importance_level))
  dual_BxC = jnp.zeros_like(ratio_BxC, dtype=bool)
  if loss_type == "cispo":
    loss_BxC = -jax.lax.stop_gradient(jnp.minimum(ratio_BxC, epsilon_high)) * adv_BxC * logps_BxC
    low_BxC = jnp.zeros_like(dual_BxC)
    high_BxC = (ratio_BxC > epsilon_high) & (adv_BxC > 0)
  else:
    clipped_ratio_BxC = jnp.clip(ratio_BxC, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss_BxC = -jnp.minimum(ratio_BxC * adv_BxC, clipped_ratio_BxC * adv_BxC)
    if clip_ratio_c is not None:
      dual_bound_BxC = -adv_BxC * clip_ratio_c
      dual_BxC = (adv_BxC < 0) & (loss_BxC > dual_bound_BxC)
      loss_BxC = jnp.where(adv_BxC < 0, jnp.minimum(loss_BxC, dual_bound_BxC), loss_BxC)
    low_BxC = (ratio_BxC < 1.0 - epsilon_low) & (adv_BxC < 0)
    high_BxC = (ratio_BxC > 1.0 + epsilon_high) & (adv_BxC > 0)

  weights_BxC = _unit_weights(mask_BxC, importance_level)
  frac = lambda flag_BxC: jnp.sum(weights_BxC * flag_BxC)
  ratio_sg_BxC = jax.lax.stop_gradient(ratio_BxC)
  has_tokens = masked_count(mask_BxC) > 0
  valid = mask_BxC.astype(bool)
  metrics = {
      "clip_frac/low": frac(low_BxC),
      "clip_frac/high": frac(high_BxC),
      "clip_frac/region": frac(low_BxC | high_BxC),
      "clip_frac/dual": frac(dual_BxC),
      "ratio/min": jnp.where(has_tokens, jnp.min(jnp.where(valid, ratio_sg_BxC, jnp.inf)), 1.0),
      "ratio/mean": jnp.where(has_tokens, jnp.sum(weights_BxC * ratio_sg_BxC), 1.0),
      "ratio/max": jnp.where(has_tokens, jnp.max(jnp.where(valid, ratio_sg_BxC, -jnp.inf)), 1.0),
  }
  return loss_BxC, metrics


def rl_counts(mask_BxC: Array, token_normalizer: Array | None = None) -> dict[str, Array]:
  """The normalisers of the GRPO-family aggregations: rows, completion tokens, and the generation batch's token
  count for dapo / cispo (`token_normalizer`, defaulting to this batch's tokens)."""
  tokens = masked_count(mask_BxC)
  return {"rows": jnp.float32(mask_BxC.shape[0]), "tokens": tokens,
          "generation_tokens": tokens if token_normalizer is None else jnp.asarray(token_normalizer, jnp.float32)}


def rl_batch_counts(batch: Mapping[str, Array]) -> dict[str, Array]:
  """`rl_counts` of an RL batch. `num_loss_tokens` is the generation batch's token count: a scalar, or one copy per
  row as the RL loop writes it (so it survives row splits)."""
  generation_tokens = batch.get("num_loss_tokens")
  return rl_counts(batch["completion_mask"], None if generation_tokens is None else jnp.max(generation_tokens))


def aggregate(loss_BxC: Array, mask_BxC: Array, *, loss_type: str = "grpo", max_completion_length: int | None = None,
              token_normalizer: Array | None = None, counts: Mapping[str, Array] | None = None) -> Array:
  """Masked per-token losses -> scalar, by TRL `loss_type`.

  grpo: mean_i (sum_t l*m / max(sum_t m, 1)) over all B rows (verl `seq-mean-token-mean`).
  bnpo: sum l*m / max(sum m, 1) (verl `token-mean`).
  dr_grpo: sum l*m / (B * L_max), L_max = max_completion_length or C (TRL dr_grpo; verl's
    `seq-mean-token-sum-norm` divides by L_max only).
  dapo, cispo: sum l*m / token_normalizer, the token count of the whole generation batch (TRL's
    num_items_in_batch); defaults to this batch's count, i.e. bnpo.
  B and the counts come from `counts` when given (`rl_counts` of the whole batch, fixed before micro-batching).
  """
  counts = rl_counts(mask_BxC, token_normalizer) if counts is None else counts
  total = masked_sum(loss_BxC, mask_BxC)
  if loss_type == "grpo":
    per_row_B = masked_sum(loss_BxC, mask_BxC, axis=-1) / jnp.maximum(masked_count(mask_BxC, axis=-1), 1.0)
    return jnp.sum(per_row_B) / counts["rows"]
  if loss_type == "bnpo":
    return total / jnp.maximum(counts["tokens"], 1.0)
  if loss_type == "dr_grpo":
    return total / (counts["rows"] * (max_completion_length or mask_BxC.shape[1]))
  if loss_type in ("dapo", "cispo"):
    return total / jnp.maximum(counts["generation_tokens"], 1.0)
  raise ValueError(f"aggregate: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def regularized_loss(token_loss_BxC: Array, mask_BxC: Array, *, logps_BxC: Array, loss_type: str = "grpo",
                     max_completion_length: int | None = None, token_normalizer: Array | None = None,
                     ref_logps_BxC: Array | None = None, beta: float = 0.0, kl_estimator: str = "k3",
                     entropy_BxC: Array | None = None, entropy_coef: float = 0.0,
                     counts: Mapping[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
  """aggregate(token_loss + beta * KL) - entropy_coef * masked_mean(entropy); metrics loss, kl, entropy, n_tokens.
  Token means divide by `counts["tokens"]` when counts are given (see `aggregate`).

  The KL is added per token before aggregation, as TRL does (verl adds agg(KL) with the same aggregation, which
  is the same number); `kl` is reported whenever ref log-probs are given, `entropy` whenever entropies are.
  """
  counts = rl_counts(mask_BxC, token_normalizer) if counts is None else counts
  per_token_BxC = token_loss_BxC
  kl_metric = jnp.float32(0.0)
  if ref_logps_BxC is not None:
    kl_BxC = kl_penalty(logps_BxC, jax.lax.stop_gradient(ref_logps_BxC), kl_estimator)
    kl_metric = mean_by(jax.lax.stop_gradient(kl_BxC), mask_BxC, counts["tokens"])
    if beta:
      per_token_BxC = per_token_BxC + beta * kl_BxC
  elif beta:
    raise ValueError("policy_loss: beta > 0 needs ref_logps")
  loss = aggregate(per_token_BxC, mask_BxC, loss_type=loss_type, max_completion_length=max_completion_length,
                   counts=counts)
  entropy_metric = jnp.float32(0.0)
  if entropy_BxC is not None:
    mean_entropy = mean_by(entropy_BxC, mask_BxC, counts["tokens"])
    entropy_metric = jax.lax.stop_gradient(mean_entropy)
    if entropy_coef:
      loss = loss - entropy_coef * mean_entropy
  elif entropy_coef:
    raise ValueError("policy_loss: entropy_coef > 0 needs entropy")
  return loss, {"loss": loss, "kl": kl_metric, "entropy": entropy_metric, "n_tokens": masked_count(mask_BxC)}


def policy_loss(logps: Array, old_logps: Array, advantages: Array, mask: Array, *, loss_type: str = "grpo",
                importance_level: str = "token", epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                clip_ratio_c: float | None = None, ref_logps: Array | None = None, beta: float = 0.0,
                kl_estimator: str = "k3", max_completion_length: int | None = None, entropy: Array | None = None,
                entropy_coef: float = 0.0, token_normalizer: Array | None = None,
                counts: Mapping[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
  """The GRPO-family loss on [B,C] log-probs; advantages [B] or per token [B,C]. Returns (loss, metrics).

  = `regularized_loss(token_policy_losses(...))`; see those for the formulas and the TRL/verl mode each option
  matches. Options are validated through `GRPOConfig`. Pass old_logps = stop_gradient(logps) for a rollout
  batch used for one update only (ratio 1, gradient still flows).
  """
  cfg = GRPOConfig(loss_type=loss_type, importance_level=importance_level, epsilon_low=epsilon_low,
                   epsilon_high=epsilon_high, clip_ratio_c=clip_ratio_c, beta=beta, kl_estimator=kl_estimator,
                   max_completion_length=max_completion_length, entropy_coef=entropy_coef)
  token_loss_BxC, clip_metrics = token_policy_losses(
      logps, old_logps, advantages, mask, loss_type=cfg.loss_type, importance_level=cfg.importance_level,
      epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high, clip_ratio_c=cfg.clip_ratio_c)
  loss, metrics = regularized_loss(
      token_loss_BxC, mask, logps_BxC=logps, loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
      token_normalizer=token_normalizer, ref_logps_BxC=ref_logps, beta=cfg.beta, kl_estimator=cfg.kl_estimator,
      entropy_BxC=entropy, entropy_coef=cfg.entropy_coef, counts=counts)
  return loss, {**metrics, **clip_metrics}


def make_grpo_loss(cfg: GRPOConfig = GRPOConfig()) -> CountedLoss:
  """loss_fn(model, batch, rng) on the RL batch layout: forward pass, then `policy_loss`.

  Uses batch `old_logps` (stop_gradient(logps) when absent: one update per rollout batch), `ref_logps` when
  present, `advantages` [B] or [B,C], and `num_loss_tokens` as the dapo/cispo normalizer when present; its
  normalisers are `rl_batch_counts` (fixed for the whole batch by the train step).
  """

  def loss_fn(model, batch: Mapping[str, Array], rng=None) -> tuple[Array, dict[str, Array]]:
    del rng  # deterministic
    logps_BxC, entropy_BxC = completion_logps(model, batch, temperature=cfg.temperature)
    old_logps_BxC = batch.get("old_logps", jax.lax.stop_gradient(logps_BxC))
    return policy_loss(logps_BxC, old_logps_BxC, batch["advantages"], batch["completion_mask"],
                       ref_logps=batch.get("ref_logps"), entropy=entropy_BxC,
                       counts=counts_in(batch, rl_batch_counts), **cfg.kernel_kwargs())

  return CountedLoss(loss_fn, rl_batch_counts)
