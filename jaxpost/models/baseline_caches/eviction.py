"""A fixed-budget KV cache whose eviction rule is a pluggable policy (sinks + window, H2O, TOVA).

Budget unit: KV tokens held per (sequence, layer, KV head) between steps; the memory they take is
`budget * 2 * head_dim * itemsize` bytes per (sequence, layer, KV head), reported by `live_bytes`.

One step (T new tokens: a prompt, or one token at a time while decoding): the new queries attend, causally, to the
held tokens and to the new tokens (dense attention over the prompt at prefill, as the papers do); then the policy
ranks the held + new candidates and the best `budget` stay, in token order. A multi-token step therefore holds up
to budget + T tokens transiently, like any prefill, and evicts once at its end.

Letters: B batch, T new tokens, S slots (= budget, capped by the dense capacity), C = S + T candidates, K KV heads,
G query heads per KV head, D head dim, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from jaxpost.models.baseline_caches._common import attention_with_probs, check_positive, slot_bytes, token_indices
from jaxpost.models.config import ModelConfig


class StepView(NamedTuple):
  """What a policy may look at to rank the candidates (held slots first, in token order, then the new tokens)."""

  token_BxCxK: jax.Array  # int32 index of the token among its sequence's real tokens, -1 for an empty candidate
  probs_BxKxGxTxC: jax.Array  # float32 attention weights of this step's queries
  query_valid_BxT: jax.Array  # bool: which of this step's queries are real tokens
  last_B: jax.Array  # int32: index of the sequence's newest real token after this step
  mass_BxCxK: jax.Array | None  # float32 attention mass received so far (policies with accumulates_mass only)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvictionPolicy:
  """Base of the eviction rules; an instance is also the sampler's hashable `cache_factory`.

  Subclasses define `priority(view) -> [B, C, K]` (higher stays; ties go to the older token).
  """

  budget: int
  accumulates_mass: ClassVar[bool] = False

  def __post_init__(self):
    check_positive(type(self).__name__, budget=self.budget)

  def priority(self, view: StepView) -> jax.Array:
    raise NotImplementedError

  def __call__(self, cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> "EvictionKVCache":
    """A cache of min(budget, capacity) slots per (sequence, layer, KV head); `capacity` is the dense length."""
    return EvictionKVCache.create(cfg, batch_size, min(self.budget, capacity), policy=self, dtype=dtype)


class EvictionLayer(NamedTuple):
  """One layer's storage; live slots come first, in token order."""

  keys: jax.Array  # [B, S, K, D], after RoPE
  values: jax.Array  # [B, S, K, D]
  token: jax.Array  # [B, S, K] int32: index of the token in the slot, -1 when empty
  mass: jax.Array | None  # [B, S, K] float32 accumulated attention mass (policies with accumulates_mass only)


@flax.struct.dataclass
class EvictionKVCache:
  """KVCache protocol (`begin_step`, `attend`, `end_step`) holding at most S tokens per (sequence, KV head)."""

  layers: tuple[EvictionLayer, ...]
  seen_B: jax.Array  # int32: real tokens fed before this step
  step_valid_BxT: jax.Array  # bool: the tokens registered by begin_step ([B, 1] between steps, shape-stable)
  policy: EvictionPolicy = flax.struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, cfg: ModelConfig, batch_size: int, slots: int, *, policy: EvictionPolicy,
             dtype=None) -> "EvictionKVCache":
    check_positive("EvictionKVCache.create", slots=slots)
    b, k = batch_size, cfg.num_kv_heads
    zeros = jnp.zeros((b, slots, k, cfg.head_dim), dtype or cfg.compute_dtype)
    mass = jnp.zeros((b, slots, k), jnp.float32) if policy.accumulates_mass else None
    layer = EvictionLayer(keys=zeros, values=zeros, token=jnp.full((b, slots, k), -1, jnp.int32), mass=mass)
    return cls(layers=(layer,) * cfg.num_layers, seen_B=jnp.zeros((b,), jnp.int32),
               step_valid_BxT=jnp.zeros((b, 1), bool), policy=policy)

  @property
  def slots(self) -> int:
    return self.layers[0].token.shape[1]

  def begin_step(self, valid_BxT: jax.Array) -> "EvictionKVCache":
    return self.replace(step_valid_BxT=valid_BxT.astype(bool))

  def attend(self, layer, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, evict_logits_BxTxK=None):
    del evict_logits_BxTxK  # training-free: the policy decides
    state, valid_BxT = self.layers[layer], self.step_valid_BxT
    b, t, k = k_BxTxKxD.shape[:3]
    keys_BxCxKxD = jnp.concatenate([state.keys, k_BxTxKxD.astype(state.keys.dtype)], axis=1)
    values_BxCxKxD = jnp.concatenate([state.values, v_BxTxKxD.astype(state.values.dtype)], axis=1)
    new_token_BxTxK = jnp.broadcast_to(token_indices(valid_BxT, self.seen_B)[:, :, None], (b, t, k))
    token_BxCxK = jnp.concatenate([state.token, new_token_BxTxK], axis=1)
    held_BxKxTxS = jnp.broadcast_to(jnp.transpose(state.token >= 0, (0, 2, 1))[:, :, None],
                                    (b, k, t, self.slots))
    causal_BxTxT = jnp.tril(jnp.ones((t, t), bool))[None] & valid_BxT[:, None, :]
    new_BxKxTxT = jnp.broadcast_to(causal_BxTxT[:, None], (b, k, t, t))
    out, probs_BxKxGxTxC = attention_with_probs(q_BxTxHxD, keys_BxCxKxD, values_BxCxKxD,
                                                jnp.concatenate([held_BxKxTxS, new_BxKxTxT], axis=3))
    mass_BxCxK = None
    if self.policy.accumulates_mass:
      step_mass_BxKxC = jnp.einsum("bkgtc,bt->bkc", probs_BxKxGxTxC, valid_BxT.astype(jnp.float32))
      mass_BxCxK = (jnp.concatenate([state.mass, jnp.zeros((b, t, k), jnp.float32)], axis=1)
                    + jnp.transpose(step_mass_BxKxC, (0, 2, 1)))
    last_B = self.seen_B + jnp.sum(valid_BxT, axis=1, dtype=jnp.int32) - 1
    view = StepView(token_BxCxK=token_BxCxK, probs_BxKxGxTxC=probs_BxKxGxTxC, query_valid_BxT=valid_BxT,
                    last_B=last_B, mass_BxCxK=mass_BxCxK)
    source_BxSxK, kept_BxSxK = _survivors(self.policy.priority(view), token_BxCxK >= 0, self.slots)
    take = lambda x: jnp.take_along_axis(x, source_BxSxK.reshape(source_BxSxK.shape + (1,) * (x.ndim - 3)), axis=1)
    new = EvictionLayer(keys=take(keys_BxCxKxD), values=take(values_BxCxKxD),
                        token=jnp.where(kept_BxSxK, take(token_BxCxK), -1),
                        mass=None if mass_BxCxK is None else jnp.where(kept_BxSxK, take(mass_BxCxK), 0.0))
    return out, self.replace(layers=self.layers[:layer] + (new,) + self.layers[layer + 1:])

  def end_step(self) -> "EvictionKVCache":
    seen_B = self.seen_B + jnp.sum(self.step_valid_BxT, axis=1, dtype=jnp.int32)
    return self.replace(seen_B=seen_B, step_valid_BxT=jnp.zeros((self.seen_B.shape[0], 1), bool))

  def read_first(self, columns: int) -> "EvictionKVCache":
    return self  # slots are not in token order

  def kept_tokens(self, layer: int) -> jax.Array:
    """[B, S, K] int32: the token index held in each slot of `layer`, -1 for an empty slot."""
    return self.layers[layer].token

  def live_tokens(self) -> jax.Array:
    """[L, B, K] int32: tokens held per (layer, sequence, KV head)."""
    return jnp.stack([jnp.sum(layer.token >= 0, axis=1, dtype=jnp.int32) for layer in self.layers])

  def live_bytes(self) -> jax.Array:
    """Bytes of keys and values held for live tokens (what the budget saves)."""
    return jnp.sum(self.live_tokens()) * slot_bytes(self.layers[0].keys)

  def allocated_bytes(self) -> int:
    """Bytes of key and value storage allocated: budget slots for every layer, sequence and KV head."""
    return sum(2 * layer.keys.size * layer.keys.dtype.itemsize for layer in self.layers)

  def compression(self) -> jax.Array:
    """[B]: tokens seen per live slot, averaged over layers and KV heads (1 = nothing evicted)."""
    return self.seen_B / jnp.maximum(jnp.mean(self.live_tokens(), axis=(0, 2)), 1)


def _survivors(priority_BxCxK: jax.Array, valid_BxCxK: jax.Array, slots: int) -> tuple[jax.Array, jax.Array]:
  """The `slots` best valid candidates (stable: ties keep the earlier, i.e. older, one), listed in candidate order.

  Returns the source candidate of each slot [B, S, K] and whether that slot holds a kept token [B, S, K].
  """
  c = priority_BxCxK.shape[1]
  order_BxCxK = jnp.argsort(-jnp.where(valid_BxCxK, priority_BxCxK, -jnp.inf), axis=1, stable=True)
  rank_BxCxK = jnp.argsort(order_BxCxK, axis=1)
  kept_BxCxK = valid_BxCxK & (rank_BxCxK < slots)
  candidate_C = jnp.arange(c)[None, :, None]
  source_BxSxK = jnp.argsort(jnp.where(kept_BxCxK, candidate_C, c + candidate_C), axis=1)[:, :slots]
  return source_BxSxK, jnp.take_along_axis(kept_BxCxK, source_BxSxK, axis=1)
