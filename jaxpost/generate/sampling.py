"""Choosing the next token from logits: temperature, top-k, top-p, greedy, and the log-probs RL needs.

Letters: N rows (prompts x samples), V vocab. Pure array functions, one key per row, so a row's draw depends on
its own key and logits only, never on the other rows of the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpost.generate.config import SamplingConfig


def truncated_logits(logits_NxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """logits / T with the tokens outside the top-k and the top-p nucleus set to -inf.

  top-p keeps, in order of decreasing probability, every token whose preceding mass is < top_p (the smallest
  prefix holding at least top_p, as in Hugging Face); top-k applies first. Tied logits at a cut are all kept.
  """
  scaled_NxV = logits_NxV.astype(jnp.float32) / cfg.temperature
  if not cfg.top_k and cfg.top_p >= 1.0:
    return scaled_NxV
  vocab = scaled_NxV.shape[-1]
  sorted_NxK, _ = jax.lax.top_k(scaled_NxV, min(cfg.top_k, vocab) if cfg.top_k else vocab)  # descending
  threshold_Nx1 = sorted_NxK[:, -1:]
  if cfg.top_p < 1.0:
    probs_NxK = jax.nn.softmax(sorted_NxK, axis=-1)
    mass_before_NxK = jnp.cumsum(probs_NxK, axis=-1) - probs_NxK
    kept_N = jnp.sum(mass_before_NxK < cfg.top_p, axis=-1)  # >= 1: the first token has 0 mass before it
    threshold_Nx1 = jnp.take_along_axis(sorted_NxK, kept_N[:, None] - 1, axis=-1)
  return jnp.where(scaled_NxV >= threshold_Nx1, scaled_NxV, -jnp.inf)


def choose_tokens(logits_NxV: jax.Array, keys_N: jax.Array | None, cfg: SamplingConfig):
  """The next token of every row, with two log-probs of it (both [N] float32).

  `logps`: log softmax(logits / T) without truncation (T = 1 when greedy) — what an RL loss recomputes from the
  policy, so it is the one to use as old_logps. `sampling_logps`: the log-prob under the distribution actually
  sampled from (after top-k/top-p); 0 for greedy, whose distribution is a point mass.
  """
  logits_NxV = logits_NxV.astype(jnp.float32)
  if cfg.greedy:
    tokens_N = jnp.argmax(logits_NxV, axis=-1).astype(jnp.int32)
    return tokens_N, _gather(jax.nn.log_softmax(logits_NxV, axis=-1), tokens_N), jnp.zeros(tokens_N.shape)
  truncated_NxV = truncated_logits(logits_NxV, cfg)
  tokens_N = jax.vmap(jax.random.categorical)(keys_N, truncated_NxV).astype(jnp.int32)
  logps_N = _gather(jax.nn.log_softmax(logits_NxV / cfg.temperature, axis=-1), tokens_N)
  return tokens_N, logps_N, _gather(jax.nn.log_softmax(truncated_NxV, axis=-1), tokens_N)


def _gather(values_NxV: jax.Array, tokens_N: jax.Array) -> jax.Array:
  return jnp.take_along_axis(values_NxV, tokens_N[:, None], axis=-1)[:, 0]
