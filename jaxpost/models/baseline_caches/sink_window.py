"""StreamingLLM (arXiv 2309.17453): keep the first `sinks` tokens (attention sinks) and the most recent ones.

With a budget of S tokens per (sequence, layer, KV head), the cache holds tokens 0 .. sinks-1 and the last
S - sinks tokens; the new token of a decode step attends to them and to itself, then the oldest non-sink token
leaves. All KV heads keep the same tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxpost.models.baseline_caches.eviction import EvictionPolicy, StepView


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinkWindow(EvictionPolicy):
  """Attention sinks + sliding window; `budget` tokens per (sequence, layer, KV head), `sinks` of them pinned."""

  sinks: int = 4

  def __post_init__(self):
    super().__post_init__()
    if not 0 <= self.sinks <= self.budget:
      raise ValueError(f"SinkWindow: sinks must be in [0, budget={self.budget}], got {self.sinks}")

  def priority(self, view: StepView) -> jax.Array:
    token = view.token_BxCxK
    return jnp.where(token < self.sinks, jnp.inf, token.astype(jnp.float32))
