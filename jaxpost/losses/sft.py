"""SFT: next-token cross-entropy on completion tokens only (SPEC §2), packing-aware.

The kernel returns a sum and a count; the loss divides by the loss-token count of the whole (global) batch, fixed
before micro-batching (`jaxpost.losses.counts`), so sharding, packing and accumulation are all exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxpost.losses.counts import CountedLoss, counts_in, mean_by
from jaxpost.losses.logprobs import masked_count, masked_sum, sft_loss_mask, sft_token_arrays

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Any], tuple[Array, dict[str, Array]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
  """label_smoothing: weight of the uniform-target term, as torch `F.cross_entropy(label_smoothing=...)`."""

  label_smoothing: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"SFTConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def sft_loss_terms(logps_BxT: Array, mask_BxT: Array, *, label_smoothing: float = 0.0,
                   neg_mean_logp_BxT: Array | None = None) -> tuple[Array, Array]:
  """(sum of per-token cross-entropy over loss tokens, number of loss tokens).

  Per token: (1 - ls) * -logp(target) + ls * -mean_v logp(v); with ls = 0 the plain negative log-likelihood.
  """
  nll_BxT = -logps_BxT
  if label_smoothing:
    if neg_mean_logp_BxT is None:
      raise ValueError("sft_loss_terms: label_smoothing > 0 needs neg_mean_logp_BxT")
    nll_BxT = (1.0 - label_smoothing) * nll_BxT + label_smoothing * neg_mean_logp_BxT
  return masked_sum(nll_BxT, mask_BxT), masked_count(mask_BxT)


def sft_counts(batch: Mapping[str, Array]) -> dict[str, Array]:
  """The SFT loss's normaliser: the number of loss tokens of `batch`."""
  return {"tokens": masked_count(sft_loss_mask(batch))}


def make_sft_loss(cfg: SFTConfig = SFTConfig()) -> CountedLoss:
  """loss_fn(model, batch, rng) -> (loss, metrics) on the SFT batch layout.

  loss = sum / max(n, 1), n the loss-token count of the whole batch (`sft_counts`, fixed by the train step before
  micro-batching; see `jaxpost.losses.counts`), so accumulation reproduces the big-batch token mean exactly.
  Metrics: loss, loss_sum, n_tokens (this micro-batch's), accuracy (argmax), entropy (mean over loss tokens).
  """

  def loss_fn(model, batch: Mapping[str, Array], rng=None) -> tuple[Array, dict[str, Array]]:
    del rng  # deterministic
    arrays = sft_token_arrays(model, batch)
    mask_BxT = arrays["mask"]
    tokens = counts_in(batch, sft_counts)["tokens"]
    loss_sum, n_tokens = sft_loss_terms(arrays["logps"], mask_BxT, label_smoothing=cfg.label_smoothing,
                                        neg_mean_logp_BxT=arrays["neg_mean_logp"])
    loss = loss_sum / jnp.maximum(tokens, 1.0)
    metrics = {
        "loss": loss,
        "loss_sum": loss_sum,
        "n_tokens": n_tokens,
        "accuracy": mean_by(arrays["correct"].astype(jnp.float32), mask_BxT, tokens),
        "entropy": mean_by(jax.lax.stop_gradient(arrays["entropy"]), mask_BxT, tokens),
    }
    return loss, metrics

  return CountedLoss(loss_fn, sft_counts)
