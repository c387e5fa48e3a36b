"""The Llama 3 / Qwen2 / Qwen3 decoder in Flax NNX.

Letters in names: B batch, T tokens, S cache slots, D model width, H query heads, K KV heads, F MLP hidden, V vocab.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost.models import dms
from jaxpost.models.attention import sequence_attention
from jaxpost.models.config import ModelConfig
from jaxpost.models.kv_cache import KVCache
from jaxpost.models.linear import Linear, apply_all, project
from jaxpost.models.rope import Rotary, apply_rope, inverse_frequencies, rotary

_INIT = nnx.initializers.normal(stddev=0.02)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32 and cast back before the scale, as Hugging Face does."""

  def __init__(self, dim: int, *, eps: float, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def _linear(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs, *, bias: bool = False,
            init=_INIT) -> Linear:
  return Linear(d_in, d_out, bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, init=init, rngs=rngs)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, optional q/k/v bias (Qwen2) and q/k RMSNorm (Qwen3).

  With `cfg.dms`, each KV head also emits DMS eviction decision logits (from a query neuron or an adapter) and
  hands them to the cache, which decides what to evict; without a cache nothing is evicted.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    h, k, dh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    self.q_proj = _linear(cfg, d, h * dh, rngs, bias=cfg.qkv_bias)
    self.k_proj = _linear(cfg, d, k * dh, rngs, bias=cfg.qkv_bias)
    self.v_proj = _linear(cfg, d, k * dh, rngs, bias=cfg.qkv_bias)
    self.o_proj = _linear(cfg, h * dh, d, rngs)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(dh, eps=cfg.rms_norm_eps, param_dtype=cfg.weight_dtype)
      self.k_norm = RMSNorm(dh, eps=cfg.rms_norm_eps, param_dtype=cfg.weight_dtype)
    if cfg.dms is not None and cfg.dms.variant == "adapter":
      self.dms_norm = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=cfg.weight_dtype)
      self.dms_proj = _linear(cfg, d, k, rngs, bias=True, init=nnx.initializers.zeros_init())

  def project(self, x_BxTxD: jax.Array, rot: Rotary):
    """Queries [B,T,H,Dh], keys and values [B,T,K,Dh], normed and rotated, and the DMS query neuron [B,T,K]
    (None unless that variant is on; it is read after q-norm and zeroed before and after RoPE)."""
    b, t, _ = x_BxTxD.shape
    cfg = self.cfg
    q, k, v = apply_all((self.q_proj, self.k_proj, self.v_proj), x_BxTxD)
    q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    neuron_BxTxK = None
    if cfg.dms is not None and cfg.dms.variant == "query_neuron":
      neuron_BxTxK, q = dms.split_query_neuron(q, cfg.num_kv_heads)
    q = apply_rope(q, rot)
    if neuron_BxTxK is not None:
      q = dms.zero_query_neuron(q, cfg.num_kv_heads)
    return q, apply_rope(k, rot), v, neuron_BxTxK

  def __call__(self, x_BxTxD, rot: Rotary, segment_ids_BxT, *, layer: int = 0, cache: KVCache | None = None,
               residual_BxTxD=None, last_only: bool = False):
    """Output [B, T, D], or [B, 1, D] for the last position only with `last_only` (keys and values of every
    position still reach the cache), and the updated cache. Without a cache, attention is causal within the
    segments of `segment_ids_BxT` (0 = padding), through the kernel `cfg.attention` names."""
    q, k, v, neuron_BxTxK = self.project(x_BxTxD, rot)
    if cache is None:
      out = sequence_attention(q, k, v, segment_ids_BxT, implementation=self.cfg.attention,
                               block_size=self.cfg.attention_block)
    else:
      logits_BxTxK = None
      if self.cfg.dms is not None:
        x_BxTxK = neuron_BxTxK if neuron_BxTxK is not None else self.dms_proj(self.dms_norm(residual_BxTxD))
        logits_BxTxK = dms.decision_logits(x_BxTxK, self.cfg.dms)
      out, cache = cache.attend(layer, q, k, v, logits_BxTxK)
    if last_only:
      out = out[:, -1:]
    b, t = out.shape[:2]
    return self.o_proj(out.reshape(b, t, -1)), cache


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.gate_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
    self.up_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
    self.down_proj = _linear(cfg, cfg.intermediate_size, cfg.hidden_size, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate, up = apply_all((self.gate_proj, self.up_proj), x)
    return self.down_proj(jax.nn.silu(gate) * up)


class Block(nnx.Module):
  """Pre-norm residual block: attention then MLP."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    norm = lambda: RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.weight_dtype)
    self.attn_norm = norm()
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = norm()
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, rot: Rotary, segment_ids_BxT, *, layer: int = 0, cache: KVCache | None = None,
               last_only: bool = False):
    """`last_only`: compute the output of the last position only (the attention still reads every position)."""
    attn_out, cache = self.attn(self.attn_norm(x), rot, segment_ids_BxT, layer=layer, cache=cache,
                                residual_BxTxD=x, last_only=last_only)
    x = (x[:, -1:] if last_only else x) + attn_out
    return x + self.mlp(self.mlp_norm(x)), cache


_REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                   "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _block_runner(remat: str):
  """Calls a block, rematerialised under differentiation as `remat` says (`auto`: `full` on accelerators, none
  on CPU). `jax.checkpoint` over the block closed over (not `nnx.remat`): the sampler's jitted loops hold the
  model as a pytree, and a lifted transform would update its params across trace levels. Remat changes nothing
  in a forward that is not differentiated, such as decoding."""
  if remat == "auto":
    remat = "none" if jax.default_backend() == "cpu" else "full"

  def run(block: Block, x, rotations, segment_ids, cache, layer: int, last_only: bool):
    call = lambda x, rotations, segment_ids, cache: block(x, rotations, segment_ids, layer=layer, cache=cache,
                                                           last_only=last_only)
    if remat != "none":
      call = jax.checkpoint(call, policy=_REMAT_POLICIES[remat])
    return call(x, rotations, segment_ids, cache)

  return run


def warn_past_positions(cfg: ModelConfig, length: int, what: str) -> None:
  """Warns (once per traced shape) when `length` positions exceed the model's trained range."""
  if length > cfg.max_position_embeddings:
    warnings.warn(f"{what} of {length} positions exceeds the model's max_position_embeddings "
                  f"{cfg.max_position_embeddings}: positions past it are outside what the model was trained on",
                  stacklevel=3)


class Decoder(nnx.Module):
  """Token embedding, a stack of blocks, final norm and the (possibly tied) output projection."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
                           param_dtype=cfg.weight_dtype, embedding_init=_INIT, rngs=rngs)
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.weight_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = _linear(cfg, cfg.hidden_size, cfg.vocab_size, rngs)

  def __call__(self, tokens_BxT: jax.Array, *, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, cache: KVCache | None = None):
    """Logits [B, T, V]; with a cache, `(logits, cache)` after appending these tokens to it.

    `segment_ids` (0 = padding) keep packed examples apart; with a cache they only mark which tokens are real.
    """
    hidden, cache = self.hidden_states(tokens_BxT, positions=positions, segment_ids=segment_ids, cache=cache)
    logits = self.unembed(hidden)
    return logits if cache is None else (logits, cache)

  def hidden_states(self, tokens_BxT, *, positions=None, rotations: Rotary | None = None, segment_ids=None,
                    cache=None, last_only: bool = False):
    """Final-normed hidden states [B, T, D] (and the updated cache, or None).

    `last_only`: those of the last position only, [B, 1, D], as a sampler needs after a prefill; the last layer
    then runs its output projection and MLP on that position alone, most of that layer's work on a prompt.

    `rotations`: those of the positions (`self.rotations(positions)`), for a caller that has them already, as the
    sampler does: it computes a whole decode's once, where XLA would evaluate cos and sin inside every layer's
    fused kernels at every step.
    """
    b, t = tokens_BxT.shape
    if cache is None:
      warn_past_positions(self.cfg, t, "a sequence")
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    if rotations is None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      rotations = self.rotations(positions)
    elif positions is not None:
      raise ValueError("Decoder.hidden_states: pass positions or their rotations, not both")
    if cache is not None:
      cache = cache.begin_step(segment_ids != 0)
    x = self.embed(tokens_BxT)
    run_block = _block_runner(self.cfg.remat)
    for i, block in enumerate(self.layers):
      x, cache = run_block(block, x, rotations, segment_ids, cache, i, last_only and i == len(self.layers) - 1)
    if cache is not None:
      cache = cache.end_step()
    return self.final_norm(x), cache

  def rotations(self, positions_BxT: jax.Array) -> Rotary:
    """The RoPE rotations of `positions` [B, T], as every layer applies them."""
    cfg = self.cfg
    return rotary(positions_BxT, inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))

  def unembed(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """Logits [B, T, V] in float32."""
    if self.cfg.tie_embeddings:  # the table [V, D] is the head's weight, stored [out, in]
      dtype = self.cfg.compute_dtype
      logits = project(hidden_BxTxD.astype(dtype), self.embed.embedding[...].astype(dtype))
    else:
      logits = self.lm_head(hidden_BxTxD)
    return logits.astype(jnp.float32)
