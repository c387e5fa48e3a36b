"""Loss composition (SPEC §1): a weighted sum of losses is a loss, each term's metrics under its own prefix.

Each counted term keeps its own normalisers (`jaxpost.losses.counts`): `compose(...).counts(batch)` is
{term: that term's counts}, so a composed loss split into micro-batches equals the whole-batch loss exactly even
when its terms count different tokens.

    loss_fn = compose({"grpo": (1.0, make_grpo_loss(cfg)), "sft": Term(0.1, make_sft_loss(), batch_key="demo")})
    loss, metrics = loss_fn(model, batch, rng)  # metrics: "loss", "grpo/loss", "grpo/kl", ..., "sft/accuracy", ...
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxpost.losses.counts import COUNTS, CountedLoss
from jaxpost.losses.grpo import LossFn

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Term:
  """One weighted loss; `batch_key` picks `batch[batch_key]` as its batch (default: the whole batch)."""

  weight: float
  loss_fn: LossFn
  batch_key: str | None = None

  def __post_init__(self):
    if not math.isfinite(self.weight):
      raise ValueError(f"Term.weight must be finite, got {self.weight}")
    if not callable(self.loss_fn):
      raise ValueError(f"Term.loss_fn must be callable, got {type(self.loss_fn).__name__}")


def _as_term(name: str, spec: Any) -> Term:
  if isinstance(spec, Term):
    return spec
  if isinstance(spec, tuple) and len(spec) == 2:
    return Term(weight=float(spec[0]), loss_fn=spec[1])
  raise ValueError(f"compose: term {name!r} must be (weight, loss_fn) or Term, got {spec!r}")


def compose(terms: Mapping[str, Term | tuple[float, LossFn]]) -> CountedLoss:
  """loss_fn(model, batch, rng) = sum_k weight_k * loss_k(model, batch_k, rng_k).

  Metrics: each term's metrics as "<name>/<metric>" (its unweighted loss as "<name>/loss"), and the total as
  "loss". Term k gets `jax.random.fold_in(rng, k)` (None stays None), so terms never share randomness.
  """
  if not terms:
    raise ValueError("compose: needs at least one term")
  for name in terms:
    if not name or "/" in name:
      raise ValueError(f"compose: term names must be non-empty and contain no '/', got {name!r}")
  parsed = {name: _as_term(name, spec) for name, spec in terms.items()}
  counted = {name: term for name, term in parsed.items() if hasattr(term.loss_fn, "counts")}

  def term_batch_of(term: Term, batch: Mapping[str, Any]) -> Mapping[str, Any]:
    return {k: v for k, v in batch.items() if k != COUNTS} if term.batch_key is None else batch[term.batch_key]

  def counts(batch: Mapping[str, Any]) -> dict[str, dict[str, Array]]:
    return {name: term.loss_fn.counts(term_batch_of(term, batch)) for name, term in counted.items()}

  def loss_fn(model, batch: Mapping[str, Any], rng=None) -> tuple[Array, dict[str, Array]]:
    total = jnp.float32(0.0)
    metrics: dict[str, Array] = {}
    for index, (name, term) in enumerate(parsed.items()):
      term_batch = term_batch_of(term, batch)
      if COUNTS in batch and name in batch[COUNTS]:
        term_batch = {**term_batch, COUNTS: batch[COUNTS][name]}
      term_rng = None if rng is None else jax.random.fold_in(rng, index)
      loss, term_metrics = term.loss_fn(model, term_batch, term_rng)
      total = total + term.weight * loss
      metrics.update({f"{name}/{key}": value for key, value in term_metrics.items()})
      metrics[f"{name}/loss"] = loss
    metrics["loss"] = total
    return total, metrics

  return CountedLoss(loss_fn, counts)
