"""Batched generation: one jitted program that prefills the prompts and decodes in a `lax.while_loop`.

Letters: B prompts, N = B * n rows, P prompt length, C completion capacity, V vocab. The KV cache is built by a
`cache_factory(model_cfg, batch_size, capacity)` (default: dense), so compressed caches plug in unchanged. Per
step only the last position's logits are computed; the loop ends when every row has stopped. The decode runs as
up to `cfg.decode_segments` loops, each attending over the cache columns that can hold a token by its end, not
the whole capacity (`KVCache.read_first`).
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpost.generate.config import SamplingConfig
from jaxpost.generate.rollout import Rollout
from jaxpost.generate.sampling import choose_tokens
from jaxpost.models import Decoder, DenseKVCache, KVCache, ModelConfig
from jaxpost.models.decoder import warn_past_positions
from jaxpost.models.rope import positions_from_mask

CacheFactory = Callable[[ModelConfig, int, int], KVCache]
BATCH_AXES = ("data", "fsdp")
MIN_SEGMENT_LEN = 32  # decode steps; shorter completions run as one loop


def generate(model: Decoder, prompt_tokens: jax.Array, prompt_mask: jax.Array, *, cfg: SamplingConfig,
             rng: jax.Array | None = None, max_new_tokens: int | jax.Array | None = None,
             cache_factory: CacheFactory = DenseKVCache.create, mesh: Mesh | None = None) -> Rollout:
  """Samples `cfg.n` completions of each left-padded prompt (`prompt_tokens`, `prompt_mask` [B, P]).

  `rng`: one key (row r of prompt b uses fold_in(fold_in(rng, b), r)) or B keys, one per prompt, so a prompt's
  samples do not depend on what else is in the batch; unused when greedy. `max_new_tokens`: a scalar or one per
  prompt, at most `cfg.completion_len`; an array, so changing it does not recompile. `mesh`: shard rows over
  ("data", "fsdp") (place the params with the training partition rules beforehand). `cache_factory` must be
  hashable and stable across calls (e.g. a module-level function), as it keys the compilation cache.
  """
  _check_prompts(prompt_tokens, prompt_mask)
  b = prompt_tokens.shape[0]
  limit_B = _limits(cfg.completion_len if max_new_tokens is None else max_new_tokens, b, cfg.completion_len)
  if rng is None:
    if not cfg.greedy:
      raise ValueError("generate: sampling (temperature > 0) needs an rng key")
    rng = jax.random.key(0)
  elif not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  if rng.shape not in ((), (b,)):
    raise ValueError(f"generate: rng must be one key or {b} keys (one per prompt), got key shape {rng.shape}")
  warn_past_positions(model.cfg, prompt_tokens.shape[1] + cfg.completion_len,
                      "generate: prompt width + completion_len")
  # The model goes in as a pytree (its arrays the leaves): several ms a call cheaper than nnx.split / merge.
  return _generate(model, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask, jnp.int32), rng, limit_B,
                   cfg=cfg, cache_factory=cache_factory, mesh=mesh)


def _limits(max_new_tokens, b: int, capacity: int):
  """max_new_tokens as [B] int32 (one signature for scalars and per-prompt limits), range-checked if concrete."""
  if isinstance(max_new_tokens, jax.core.Tracer) or (isinstance(max_new_tokens, jax.Array) and
                                                       not max_new_tokens.is_fully_addressable):
    return jnp.broadcast_to(max_new_tokens, (b,)).astype(jnp.int32)
  limit = np.asarray(max_new_tokens, np.int32)
  if limit.shape not in ((), (b,)) or limit.min() < 0 or limit.max() > capacity:
    raise ValueError(f"generate: max_new_tokens must be a scalar or [{b}] in [0, completion_len={capacity}], "
                     f"got {limit.tolist()}")
  return np.broadcast_to(limit, (b,))


def _check_prompts(tokens, mask) -> None:
  """Shapes always; left padding and non-empty rows whenever the mask can be read on this host."""
  if tokens.ndim != 2 or tokens.shape != mask.shape:
    raise ValueError(f"generate: prompt_tokens {tokens.shape} and prompt_mask {mask.shape} must both be [B, P]")
  if isinstance(mask, jax.core.Tracer) or (isinstance(mask, jax.Array) and not mask.is_fully_addressable):
    return
  mask = np.asarray(mask)
  if not np.isin(mask, (0, 1)).all() or (np.diff(mask, axis=1) < 0).any():
    raise ValueError("generate: prompt_mask must be 0/1 and left-padded (zeros, then ones, in every row)")
  if (mask[:, -1] == 0).any():
    raise ValueError(f"generate: prompt rows {np.flatnonzero(mask[:, -1] == 0).tolist()} are empty")


@flax.struct.dataclass
class _LoopState:
  step: jax.Array  # int32 scalar: index of the next completion column to fill
  tokens_NxC: jax.Array
  logps_NxC: jax.Array
  sampling_logps_NxC: jax.Array
  mask_NxC: jax.Array
  stopped_N: jax.Array
  done_N: jax.Array
  cache: KVCache


@functools.partial(jax.jit, static_argnames=("cfg", "cache_factory", "mesh"))
def _generate(model: Decoder, prompt_BxP, prompt_mask_BxP, rng, limit_B, *, cfg: SamplingConfig,
              cache_factory: CacheFactory, mesh: Mesh | None) -> Rollout:
  b, p = prompt_BxP.shape
  n_rows, c = b * cfg.n, cfg.completion_len
  shard = functools.partial(_shard_rows, n_rows=n_rows, mesh=mesh)
  prompt_NxP = shard(jnp.repeat(prompt_BxP, cfg.n, axis=0))
  prompt_mask_NxP = shard(jnp.repeat(prompt_mask_BxP, cfg.n, axis=0))
  limit_N = shard(jnp.repeat(limit_B, cfg.n))
  keys_N = None if cfg.greedy else shard(_row_keys(rng, b, cfg.n))
  stop_ids = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)
  next_position_N = jnp.sum(prompt_mask_NxP, axis=1)  # position of the first completion token

  chunk = cfg.prefill_chunk if 0 < cfg.prefill_chunk < p else p
  width = -(-p // chunk) * chunk  # the prompt left-padded to whole chunks: the cache's first `width` columns
  fed_NxW = jnp.pad(prompt_NxP, ((0, 0), (width - p, 0)), constant_values=cfg.pad_id)
  fed_mask_NxW = jnp.pad(prompt_mask_NxP, ((0, 0), (width - p, 0)))
  empty_cache = jax.tree.map(shard, cache_factory(model.cfg, n_rows, width + c))

  def last_logits(tokens_NxT, rotations, segment_ids_NxT, cache):
    """Logits of the last position only; the cache keeps the structure it came in with, so that static
    per-step scratch fields (e.g. DenseKVCache.step_len) do not change the loop carry's type."""
    hidden_Nx1xD, new_cache = model.hidden_states(tokens_NxT, rotations=rotations, segment_ids=segment_ids_NxT,
                                                  cache=cache, last_only=True)
    new_cache = jax.tree.unflatten(jax.tree.structure(cache), jax.tree.leaves(new_cache))
    return model.unembed(hidden_Nx1xD)[:, 0], new_cache

  def record(s: _LoopState, logits_NxV, cache) -> _LoopState:
    """Chooses completion token `s.step` of every row and writes it where the row is still going."""
    step_keys_N = None if keys_N is None else jax.vmap(jax.random.fold_in, (0, None))(keys_N, s.step)
    token_N, logp_N, sampling_logp_N = choose_tokens(logits_NxV, step_keys_N, cfg)
    live_N = ~s.done_N
    stop_N = live_N & jnp.isin(token_N, stop_ids)
    put = lambda arr, value: jax.lax.dynamic_update_slice(arr, value[:, None].astype(arr.dtype), (0, s.step))
    return _LoopState(
        step=s.step + 1,
        tokens_NxC=put(s.tokens_NxC, jnp.where(live_N, token_N, cfg.pad_id)),
        logps_NxC=put(s.logps_NxC, jnp.where(live_N, logp_N, 0.0)),
        sampling_logps_NxC=put(s.sampling_logps_NxC, jnp.where(live_N, sampling_logp_N, 0.0)),
        mask_NxC=put(s.mask_NxC, live_N),
        stopped_N=s.stopped_N | stop_N,
        done_N=s.done_N | stop_N | (s.step + 1 >= limit_N),
        cache=cache)

  # RoPE rotations of every position this call reaches, computed once (left to the layers, XLA evaluates cos and
  # sin inside their fused kernels, for every head and at every step), and gathered per row before the loop.
  by_position = model.rotations(jnp.arange(p + c)[None])
  rotations_at = lambda positions_NxT: jax.tree.map(lambda table: table[0, positions_NxT], by_position)
  rotations_NxC = rotations_at(next_position_N[:, None] - 1 + jnp.arange(c))  # step j feeds token j - 1

  def decode_step(s: _LoopState) -> _LoopState:
    previous_N = jax.lax.dynamic_slice_in_dim(s.tokens_NxC, s.step - 1, 1, axis=1)
    rotations_Nx1 = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, s.step, 1, axis=1), rotations_NxC)
    logits_NxV, cache = last_logits(previous_N, rotations_Nx1, (~s.done_N)[:, None].astype(jnp.int32), s.cache)
    return record(s, logits_NxV, cache)

  positions_NxW = positions_from_mask(fed_mask_NxW)

  def prefill(cache, chunk_xs):
    tokens_NxK, mask_NxK, positions_NxK = chunk_xs
    logits_NxV, cache = last_logits(tokens_NxK, rotations_at(positions_NxK), mask_NxK, cache)
    return cache, logits_NxV

  if width == chunk:  # one shot
    cache, logits_NxV = prefill(empty_cache.read_first(width), (fed_NxW, fed_mask_NxW, positions_NxW))
  else:
    by_chunk = lambda x: x.reshape(n_rows, width // chunk, chunk).swapaxes(0, 1)
    cache, logits_CxNxV = jax.lax.scan(prefill, empty_cache.read_first(width),
                                       (by_chunk(fed_NxW), by_chunk(fed_mask_NxW), by_chunk(positions_NxW)))
    logits_NxV = logits_CxNxV[-1]  # the prompt's last column is a real token in every (left-padded) row
  zeros_NxC = shard(jnp.zeros((n_rows, c), jnp.float32))
  start = _LoopState(step=jnp.zeros((), jnp.int32), tokens_NxC=zeros_NxC.astype(jnp.int32), logps_NxC=zeros_NxC,
                     sampling_logps_NxC=zeros_NxC, mask_NxC=zeros_NxC.astype(jnp.int32),
                     stopped_N=jnp.zeros((n_rows,), bool), done_N=limit_N <= 0, cache=cache)
  last = record(start, logits_NxV, cache)
  for stop in _segment_stops(c, cfg.decode_segments):  # steps before `stop` write columns below p + stop
    keep_going = lambda s, stop=stop: (s.step < stop) & ~jnp.all(s.done_N)
    last = jax.lax.while_loop(keep_going, decode_step, last.replace(cache=last.cache.read_first(width + stop)))
  return Rollout(prompt_tokens=prompt_NxP, prompt_mask=prompt_mask_NxP, completion_tokens=last.tokens_NxC,
                 completion_mask=last.mask_NxC, logps=last.logps_NxC, sampling_logps=last.sampling_logps_NxC,
                 lengths=jnp.sum(last.mask_NxC, axis=1), stopped=last.stopped_N,
                 overflow=getattr(last.cache, "overflow_B", jnp.zeros((n_rows,), bool)), group_size=cfg.n)


def _segment_stops(capacity: int, segments: int) -> list[int]:
  """Where each decode loop stops: `segments` near-equal spans of the completion, each at least
  MIN_SEGMENT_LEN steps long (a loop is one more compiled copy of the model step)."""
  n = max(1, min(segments, capacity // MIN_SEGMENT_LEN))
  return [-(-capacity * i // n) for i in range(1, n + 1)]


def _row_keys(rng: jax.Array, b: int, n: int) -> jax.Array:
  """[B*n] keys: sample r of prompt i gets fold_in(prompt_key_i, r); one key is first folded with the prompt index."""
  prompt_keys_B = rng if rng.ndim == 1 else jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(b))
  fold = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)), (0, None))
  return fold(prompt_keys_B, jnp.arange(n)).reshape(b * n)


def _shard_rows(x: jax.Array, *, n_rows: int, mesh: Mesh | None) -> jax.Array:
  """Pins a leading row dimension to the batch axes of `mesh`; other dimensions are left to the compiler."""
  if mesh is None or x.ndim == 0 or x.shape[0] != n_rows:
    return x
  spec = P(BATCH_AXES, *([P.UNCONSTRAINED] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
