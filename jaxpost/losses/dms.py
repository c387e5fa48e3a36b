"""DMS retrofit loss (SPEC §5): distil the model with eviction from itself without, and push eviction up to a target.

loss = mean over real tokens of KL(student || teacher) + weight * mean over rows of max(0, target - evicted fraction)
where the student runs the noisy relaxation and target = 1 - 1 / CR(step) with CR ramped linearly from 1 to
`target_cr` over `ramp_steps`. The teacher is the original model when the batch carries its logits
(`teacher_logits`; experiments/dms_retrofit adds them from a frozen copy); otherwise the same parameters with no
eviction (stop-gradient). When every parameter trains, only the first anchors the model: against itself, student
and teacher can drift together while their KL stays small.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxpost.losses.logprobs import chunked_over_positions, masked_mean
from jaxpost.models import dms

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Any], tuple[Array, dict[str, Array]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DMSLossConfig:
  """target_cr: final compression ratio; ramp_steps: steps to reach it (about 100 per unit of CR in the paper);
  compression_weight: weight of the one-sided compression term."""

  target_cr: float = 8.0
  ramp_steps: int = 700
  compression_weight: float = 1.0

  def __post_init__(self):
    if self.target_cr < 1.0:
      raise ValueError(f"DMSLossConfig.target_cr must be >= 1, got {self.target_cr}")
    if self.ramp_steps < 0:
      raise ValueError(f"DMSLossConfig.ramp_steps must be >= 0, got {self.ramp_steps}")
    if self.compression_weight < 0:
      raise ValueError(f"DMSLossConfig.compression_weight must be >= 0, got {self.compression_weight}")


def target_eviction_fraction(step: Array, *, target_cr: float, ramp_steps: int) -> Array:
  """1 - 1 / CR(step), CR(step) = 1 + (target_cr - 1) * min(step / ramp_steps, 1)."""
  progress = 1.0 if ramp_steps == 0 else jnp.minimum(jnp.asarray(step, jnp.float32) / ramp_steps, 1.0)
  return 1.0 - 1.0 / (1.0 + (target_cr - 1.0) * progress)


def distillation_kl(student_logits_BxTxV: Array, teacher_logits_BxTxV: Array) -> Array:
  """[B, T]: KL(student || teacher) = sum_v p_s (log p_s - log p_t), in float32."""
  logp_s = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32), axis=-1)
  logp_t = jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(logp_s) * (logp_s - logp_t), axis=-1)


def eviction_fractions(decisions_LxBxTxK: Array, mask_BxT: Array) -> tuple[Array, Array]:
  """(per row [B], per layer [L]) fraction of decisions that evict, over the real tokens and KV heads."""
  d = decisions_LxBxTxK * mask_BxT[None, :, :, None]
  per_row_B = jnp.sum(d, axis=(0, 2, 3)) / jnp.maximum(jnp.sum(mask_BxT, axis=1) * d.shape[0] * d.shape[3], 1)
  per_layer_L = jnp.sum(d, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(mask_BxT) * d.shape[3], 1)
  return per_row_B, per_layer_L


def compression_loss(fraction_B: Array, row_has_tokens_B: Array, target: Array) -> Array:
  """Mean over (non-empty) rows of max(0, target - evicted fraction): it only pushes eviction up to the target."""
  return masked_mean(jnp.maximum(target - fraction_B, 0.0), row_has_tokens_B)


def make_dms_loss(cfg: DMSLossConfig = DMSLossConfig()) -> LossFn:
  """loss_fn(model, batch, rng) -> (loss, metrics) on the SFT batch layout (`loss_mask` is not used: DMS distils
  every real token). An optional `batch["step"]` ([B] or scalar) drives the CR ramp; without it the final target
  applies. An optional `batch["teacher_logits"]` [B, T, V] is the teacher; without it, the model with eviction off.
  Metrics: loss, kl, compression_loss, target_fraction, eviction_fraction, compression, and
  eviction_fraction/layer{i}, compression/layer{i} (hard decisions of the noisy student)."""

  def loss_fn(model, batch: Mapping[str, Array], rng) -> tuple[Array, dict[str, Array]]:
    tokens_BxT = batch["tokens"]
    segment_ids_BxT = batch.get("segment_ids", jnp.ones(tokens_BxT.shape, jnp.int32))
    positions_BxT = batch.get("positions")
    student_BxTxD, decisions_LxBxTxK = dms.hidden_states(model, tokens_BxT, positions=positions_BxT,
                                                         segment_ids=segment_ids_BxT, mode="soft", rng=rng)
    if "teacher_logits" in batch:
      teacher_BxTx_ = batch["teacher_logits"]
      teacher_logits = lambda logits: logits
    else:  # the teacher's hidden states [B, T, D]; both are projected to the vocabulary a chunk at a time
      teacher_BxTx_, _ = model.hidden_states(tokens_BxT, positions=positions_BxT, segment_ids=segment_ids_BxT)
      teacher_logits = model.unembed
    kl_of = lambda student, teacher: {"kl": distillation_kl(
        model.unembed(student), jax.lax.stop_gradient(teacher_logits(jax.lax.stop_gradient(teacher))))}
    kl_BxT = chunked_over_positions(kl_of, student_BxTxD, teacher_BxTx_, chunk=model.cfg.logits_chunk)["kl"]
    real_BxT = (segment_ids_BxT != 0).astype(jnp.float32)
    kl = masked_mean(kl_BxT, real_BxT)
    step = jnp.max(batch["step"]) if "step" in batch else cfg.ramp_steps
    target = target_eviction_fraction(step, target_cr=cfg.target_cr, ramp_steps=cfg.ramp_steps)
    fraction_B, fraction_L = eviction_fractions(decisions_LxBxTxK, real_BxT)
    compression = compression_loss(fraction_B, jnp.any(real_BxT > 0, axis=1), target)
    loss = kl + cfg.compression_weight * compression
    fraction = jax.lax.stop_gradient(masked_mean(fraction_B, jnp.any(real_BxT > 0, axis=1)))
    metrics = {"loss": loss, "kl": kl, "compression_loss": compression, "target_fraction": target,
               "eviction_fraction": fraction, "compression": 1.0 / jnp.maximum(1.0 - fraction, 1e-6)}
    for i, f in enumerate(jax.lax.stop_gradient(fraction_L)):
      metrics[f"eviction_fraction/layer{i}"] = f
      metrics[f"compression/layer{i}"] = 1.0 / jnp.maximum(1.0 - f, 1e-6)
    return loss, metrics

  return loss_fn
