"""TOVA, Token Omission Via Attention (arXiv 2401.06104): drop the token the newest query attends to least.

After each step the candidates (held tokens and the step's new ones, the newest included) are ranked by the
attention weight of the step's last real query, averaged over the query heads of the KV head's group (GQA-aware;
the paper averages over all heads of a layer), and the top `budget` stay. At prefill that is the prompt's last
token's attention, as in the paper.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxpost.models.baseline_caches.eviction import EvictionPolicy, StepView


@dataclasses.dataclass(frozen=True, kw_only=True)
class TOVA(EvictionPolicy):
  """Keeps the `budget` tokens per (sequence, layer, KV head) with the highest current attention weight."""

  def priority(self, view: StepView) -> jax.Array:
    t = view.query_valid_BxT.shape[1]
    last_query_B = t - 1 - jnp.argmax(view.query_valid_BxT[:, ::-1], axis=1)
    weights_BxKxGxC = jnp.take_along_axis(view.probs_BxKxGxTxC, last_query_B[:, None, None, None, None], axis=3)[
        :, :, :, 0]
    return jnp.transpose(jnp.mean(weights_BxKxGxC, axis=2), (0, 2, 1))
