"""Named model configs: the tiny embedded default, the benchmark workload, and real models' true shapes.

Real presets let a user with weights on disk check shapes, plan memory and build a sharded model before loading;
`from_pretrained` still reads the checkpoint's own config.json.
"""

from __future__ import annotations

from jaxpost.models.config import ModelConfig, RopeScaling

_QWEN25 = dict(model_type="qwen2", qkv_bias=True, rope_theta=1e6, rms_norm_eps=1e-6, eos_token_id=151643)
_QWEN3 = dict(model_type="qwen3", qk_norm=True, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
              vocab_size=151936, max_position_embeddings=40960, eos_token_id=151645)
_LLAMA3 = dict(model_type="llama", vocab_size=128256, rope_theta=5e5, rms_norm_eps=1e-5,
               max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128001)

_PRESETS: dict[str, dict] = {
    # The embedded default (about 0.8M parameters): small enough to learn the arithmetic tasks in minutes on a
    # 2-core CPU; vocab covers the arithmetic tokenizer's 103 tokens.
    "tiny": dict(model_type="qwen3", qk_norm=True, vocab_size=128, hidden_size=128, num_layers=4, num_heads=4,
                 num_kv_heads=2, head_dim=32, intermediate_size=512, tie_embeddings=True,
                 max_position_embeddings=2048),
    # ../shared/BENCHMARKS.md workload (about 4.2M parameters).
    "bench": dict(model_type="qwen3", qk_norm=True, vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8,
                  num_kv_heads=4, head_dim=32, intermediate_size=768, tie_embeddings=True,
                  max_position_embeddings=4096),
    # About 100M parameters, for throughput measurements at a less toy-like size.
    "bench-100m": dict(model_type="qwen3", qk_norm=True, vocab_size=32000, hidden_size=768, num_layers=12,
                       num_heads=12, num_kv_heads=4, head_dim=64, intermediate_size=2048, tie_embeddings=True,
                       max_position_embeddings=4096),
    "qwen2.5-0.5b": dict(_QWEN25, vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                         head_dim=64, intermediate_size=4864, tie_embeddings=True, max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(_QWEN25, vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
                         num_kv_heads=2, head_dim=128, intermediate_size=8960, tie_embeddings=True,
                         max_position_embeddings=131072),
    "qwen2.5-7b": dict(_QWEN25, vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                       head_dim=128, intermediate_size=18944, tie_embeddings=False, max_position_embeddings=131072),
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
                       intermediate_size=3072, tie_embeddings=True),
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, num_layers=28, num_heads=16, num_kv_heads=8,
                       intermediate_size=6144, tie_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, num_layers=36, num_heads=32, num_kv_heads=8,
                     intermediate_size=12288, tie_embeddings=False),
    "llama-3.2-1b": dict(_LLAMA3, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                         intermediate_size=8192, tie_embeddings=True, rope_scaling=RopeScaling(factor=32.0)),
    "llama-3.2-3b": dict(_LLAMA3, hidden_size=3072, num_layers=28, num_heads=24, num_kv_heads=8, head_dim=128,
                         intermediate_size=8192, tie_embeddings=True, rope_scaling=RopeScaling(factor=32.0)),
    "llama-3.1-8b": dict(_LLAMA3, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                         intermediate_size=14336, tie_embeddings=False, rope_scaling=RopeScaling(factor=8.0)),
}


def names() -> tuple[str, ...]:
  return tuple(_PRESETS)


def get(name: str, **overrides) -> ModelConfig:
  """The preset's config, with field overrides (e.g. `dtype="bfloat16"`)."""
  if name not in _PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(_PRESETS)}")
  return ModelConfig(**{**_PRESETS[name], **overrides})
