"""H2O, Heavy-Hitter Oracle (arXiv 2306.14048): keep the tokens with the most accumulated attention, plus a window.

Each held token accumulates the attention weight it receives from every later query (the prompt's queries at
prefill, then one per decode step), summed over the query heads of its KV head's group (GQA-aware). After a step,
the `recent` newest tokens stay, and the other budget - recent slots go to the highest accumulated mass.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxpost.models.baseline_caches.eviction import EvictionPolicy, StepView


@dataclasses.dataclass(frozen=True, kw_only=True)
class H2O(EvictionPolicy):
  """Heavy hitters + recent window; `budget` tokens per (sequence, layer, KV head), `recent` of them the newest."""

  recent: int
  accumulates_mass: ClassVar[bool] = True

  def __post_init__(self):
    super().__post_init__()
    if not 0 <= self.recent <= self.budget:
      raise ValueError(f"H2O: recent must be in [0, budget={self.budget}], got {self.recent}")

  def priority(self, view: StepView) -> jax.Array:
    is_recent_BxCxK = view.token_BxCxK > view.last_B[:, None, None] - self.recent
    return jnp.where(is_recent_BxCxK, jnp.inf, view.mass_BxCxK)
