"""Loss normalisers fixed once per global batch, so micro-batching, sharding and composing are exact.

A counted loss divides its sums by counts taken from the masks (tokens, rows, ...). `loss_fn.counts(batch)` gives
them for a whole batch; the train step computes them before splitting the batch into M micro-batches and gives
each micro-batch `counts / M` under `batch["counts"]`, so the plain mean of the micro-batch losses, gradients and
token-mean metrics is the full-batch value. Without `batch["counts"]` a loss uses its own batch's counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxpost.losses.logprobs import masked_sum

Array = jax.Array
COUNTS = "counts"


class CountedLoss:
  """A loss function with the counts it normalises by: `loss_fn(model, batch, rng)` and `loss_fn.counts(batch)`."""

  def __init__(self, loss_fn: Callable, counts: Callable[[Mapping[str, Any]], dict[str, Array]]):
    self._loss_fn = loss_fn
    self.counts = counts
    self.__doc__ = loss_fn.__doc__

  def __call__(self, model, batch: Mapping[str, Any], rng=None):
    return self._loss_fn(model, batch, rng)


def counts_in(batch: Mapping[str, Any], local: Callable[[Mapping[str, Any]], dict[str, Array]]) -> dict[str, Array]:
  """The counts the train step fixed for this (micro-)batch, else `local(batch)`: this batch's own."""
  return batch[COUNTS] if COUNTS in batch else local(batch)


def mean_by(x: Array, mask: Array, count: Array) -> Array:
  """masked_sum(x, mask) / max(count, 1): a masked mean whose denominator is fixed from outside."""
  return masked_sum(x, mask) / jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)


def split_counts(counts: dict[str, Array], num_microbatches: int) -> dict[str, Array]:
  """Each micro-batch's share of the whole batch's counts: counts / M (see the module docstring)."""
  return jax.tree.map(lambda c: jnp.asarray(c, jnp.float32) / num_microbatches, counts)
