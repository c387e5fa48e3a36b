"""Per-token log-probabilities, entropies and masked reductions, plus the two model bindings.

Letters: B batch, T tokens, P prompt length, C completion length, V vocab.
Kernels here are pure array functions; `sft_token_arrays` and `completion_logps` run a model
(`model(tokens, positions=..., segment_ids=...) -> logits`) on the SFT / RL batch layouts. With a jaxpost
`Decoder` they never hold [B, T, V] float32 logits: only the positions that predict a target are turned into
logits, `ModelConfig.logits_chunk` positions at a time (rematerialised in the backward pass).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxpost.models.rope import positions_from_mask

Array = jax.Array
Model = Callable[..., Array]


def token_logps(logits_BxTxV: Array, targets_BxT: Array) -> Array:
  """log softmax(logits)[target] in float32: the log-probability of each target token."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return target_logit_BxT - logz_BxT


def token_entropy(logits_BxTxV: Array) -> Array:
  """Entropy -sum_v p log p of the predictive distribution at each position, in float32."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1)


def masked_sum(x: Array, mask: Array, axis: Any = None) -> Array:
  """Sum of x where mask is set (masked entries never propagate NaN/inf)."""
  return jnp.sum(jnp.where(mask.astype(bool), x, 0.0), axis=axis)


def masked_count(mask: Array, axis: Any = None) -> Array:
  """Number of set mask entries, as float32 (the denominator of `masked_mean`)."""
  return jnp.sum(mask.astype(jnp.float32), axis=axis)


def masked_mean(x: Array, mask: Array, axis: Any = None) -> Array:
  """masked_sum / max(masked_count, 1): 0 (never NaN) where nothing is selected."""
  return masked_sum(x, mask, axis) / jnp.maximum(masked_count(mask, axis), 1.0)


def token_stats(logits_BxTxV: Array, targets_BxT: Array) -> dict[str, Array]:
  """[B, T] statistics of predicting `targets` from `logits`, in float32: `logps`, `entropy` (of the predictive
  distribution), `neg_mean_logp` (-mean_v log p_v, for label smoothing) and `correct` (argmax == target)."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  return {
      "logps": jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0],
      "entropy": -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1),
      "neg_mean_logp": -jnp.mean(logp_BxTxV, axis=-1),
      "correct": jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT,
  }


def chunked_over_positions(fn: Callable[..., dict[str, Array]], *arrays: Array, chunk: int) -> dict[str, Array]:
  """`fn(*arrays)` -> {name: [B, T]}, computed `chunk` positions (axis 1) at a time and rematerialised, so what
  `fn` builds per position (vocabulary logits) exists for one chunk only, forward and backward. Equal to
  `fn(*arrays)` when the positions fit in one chunk (then it is exactly that call)."""
  b, t = arrays[0].shape[:2]
  if t <= chunk:
    return fn(*arrays)
  n = -(-t // chunk)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x.ndim - 2))
  split = lambda x: jnp.swapaxes(pad(x).reshape(b, n, chunk, *x.shape[2:]), 0, 1)
  out = jax.lax.map(lambda xs: jax.checkpoint(fn)(*xs), tuple(split(x) for x in arrays))
  return {k: jnp.swapaxes(v, 0, 1).reshape(b, n * chunk, *v.shape[3:])[:, :t] for k, v in out.items()}


def _targets_stats(model: Model, tokens_BxT: Array, positions_BxT: Array | None, segment_ids_BxT: Array | None,
                   targets_BxN: Array, *, start: int, temperature: float) -> dict[str, Array]:
  """`token_stats` of `targets_BxN` predicted from the logits at sequence positions start .. start + N - 1.

  A jaxpost `Decoder` turns only those positions into logits, `cfg.logits_chunk` at a time; any other model is
  a callable returning the logits [B, T, V] of every position (the loss tests' stand-ins are)."""
  kwargs = {}
  if positions_BxT is not None:
    kwargs["positions"] = positions_BxT
  if segment_ids_BxT is not None:
    kwargs["segment_ids"] = segment_ids_BxT
  n = targets_BxN.shape[1]
  scale = lambda logits: logits.astype(jnp.float32) / temperature
  if not hasattr(model, "hidden_states"):
    return token_stats(scale(model(tokens_BxT, **kwargs)[:, start:start + n]), targets_BxN)
  hidden_BxTxD, _ = model.hidden_states(tokens_BxT, **kwargs)
  stats = lambda h_BxNxD, y_BxN: token_stats(scale(model.unembed(h_BxNxD)), y_BxN)
  return chunked_over_positions(stats, hidden_BxTxD[:, start:start + n], targets_BxN, chunk=model.cfg.logits_chunk)


def sft_token_arrays(model: Model, batch: Mapping[str, Array]) -> dict[str, Array]:
  """Runs the model on an SFT batch; returns [B,T] arrays aligned with `tokens`.

  Entry t describes predicting tokens[:, t] from logits[:, t-1]: `logps`, `entropy` (of that predictive
  distribution), `neg_mean_logp` (-mean_v log p_v, for label smoothing), `correct` (argmax == token) and `mask`,
  the effective loss mask: loss_mask[t] and t > 0 and t in the same (non-pad) segment as t-1, so no loss ever
  crosses a packed-segment boundary. Column 0 is all zeros.
  """
  tokens_BxT = batch["tokens"]
  segment_ids_BxT = batch.get("segment_ids")
  arrays = _targets_stats(model, tokens_BxT, batch.get("positions"), segment_ids_BxT, tokens_BxT[:, 1:], start=0,
                          temperature=1.0)
  arrays = {k: jnp.pad(v, ((0, 0), (1, 0))) for k, v in arrays.items()}
  arrays["mask"] = sft_loss_mask(batch)
  return arrays


def sft_loss_mask(batch: Mapping[str, Array]) -> Array:
  """[B,T] bool: the tokens an SFT loss predicts (see `sft_token_arrays`); needs no model, only the batch."""
  mask_BxT = batch["loss_mask"][:, 1:].astype(bool)
  segment_ids_BxT = batch.get("segment_ids")
  if segment_ids_BxT is not None:
    mask_BxT &= (segment_ids_BxT[:, 1:] == segment_ids_BxT[:, :-1]) & (segment_ids_BxT[:, 1:] != 0)
  return jnp.pad(mask_BxT, ((0, 0), (1, 0)))


def rl_model_inputs(batch: Mapping[str, Array]) -> tuple[Array, Array, Array]:
  """(tokens, positions, segment_ids) [B, P+C] for the RL layout: concat(prompt, completion) with
  segment_ids = concat(masks) and positions = cumsum(mask) - 1 (clamped at 0 on left padding)."""
  tokens_BxT = jnp.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], axis=1).astype(jnp.int32)
  mask_BxT = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1).astype(jnp.int32)
  positions_BxT = positions_from_mask(mask_BxT)
  return tokens_BxT, positions_BxT, mask_BxT


def completion_logps(model: Model, batch: Mapping[str, Array], *, temperature: float = 1.0) -> tuple[Array, Array]:
  """(logps_BxC, entropy_BxC) of the completion tokens of an RL batch under `model`.

  Logits are divided by `temperature` first (as TRL does, so they match the sampling distribution).
  The logit predicting completion token c sits at sequence index P + c - 1.
  """
  prompt_len = batch["prompt_tokens"].shape[1]
  if prompt_len == 0:
    raise ValueError("completion_logps: batch['prompt_tokens'] has width 0; the first completion token needs a prompt")
  tokens_BxT, positions_BxT, segment_ids_BxT = rl_model_inputs(batch)
  stats = _targets_stats(model, tokens_BxT, positions_BxT, segment_ids_BxT, batch["completion_tokens"],
                         start=prompt_len - 1, temperature=temperature)
  return stats["logps"], stats["entropy"]
