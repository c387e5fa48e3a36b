"""Decoder configuration: one frozen dataclass covers the Llama 3, Qwen2 and Qwen3 families."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxpost.models.attention import ATTENTION_IMPLEMENTATIONS
from jaxpost.models.dms import DMSConfig

MODEL_TYPES = ("llama", "qwen2", "qwen3")
REMAT_POLICIES = ("auto", "none", "full", "save_dots")
EXECUTION_FIELDS = ("remat", "attention", "attention_block", "logits_chunk")  # how it runs, not what it computes
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
  """Llama 3 frequency-dependent RoPE scaling (`rope_type: llama3` in config.json)."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Shapes and numerics of a decoder-only transformer.

  `qkv_bias` is Qwen2's attention bias, `qk_norm` Qwen3's per-head RMSNorm on queries and keys.
  `param_dtype` is what weights are stored in, `dtype` what activations are computed in.
  `dms` turns on DMS learned KV-cache eviction (SPEC §5); None is the plain dense model.

  The last four fields change how the model runs, never what it computes (none is written to config.json):
  `remat` rematerialises each decoder layer under differentiation (`full`: keep only the layer's input;
  `save_dots`: keep matmul outputs without batch dims; `auto`: `full` on accelerators, `none` on CPU, where memory
  is ample and XLA kept the layers' temporaries with remat on: compiled temp bytes barely moved); `attention` picks the full-sequence attention
  kernel (`auto`: by platform and length, see `attention.resolve_attention`); `attention_block` is the query / key
  block of the blockwise kernel; `logits_chunk` is how many positions per row the losses turn into vocabulary
  logits at a time, so [B, T, V] float32 logits never exist at once.
  """

  model_type: str = "qwen3"
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rope_theta: float = 1e6
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  dms: DMSConfig | None = None
  remat: str = "auto"
  attention: str = "auto"
  attention_block: int = 512
  logits_chunk: int = 1024

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"ModelConfig.{name} {getattr(self, name)!r} is not one of {tuple(_DTYPES)}")
    for name, choices in (("remat", REMAT_POLICIES), ("attention", ATTENTION_IMPLEMENTATIONS)):
      if getattr(self, name) not in choices:
        raise ValueError(f"ModelConfig.{name} {getattr(self, name)!r} is not one of {choices}")
    for name in ("attention_block", "logits_chunk"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def group_size(self) -> int:
    """Query heads per KV head (GQA)."""
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def param_count(cfg: ModelConfig) -> int:
  """Number of parameters, computed from the config's shapes alone."""
  d, h, k, dh, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  attn = d * h * dh + 2 * d * k * dh + h * dh * d
  if cfg.qkv_bias:
    attn += h * dh + 2 * k * dh
  if cfg.qk_norm:
    attn += 2 * dh
  if cfg.dms is not None and cfg.dms.variant == "adapter":
    attn += d + d * k + k  # RMSNorm scale, Linear(d -> K) weight and bias
  per_layer = attn + 3 * d * f + 2 * d
  embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
  return cfg.num_layers * per_layer + embed + d
