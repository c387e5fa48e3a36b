"""Presets: true shapes of real models, counted independently by `transformers` on the meta device."""

import pytest
import torch
import transformers
from flax import nnx
import numpy as np

import jaxpost.models as jm

# Published config.json values of the real checkpoints (the fields that set parameter shapes).
PUBLISHED = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                         tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                       tie_word_embeddings=False),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                       tie_word_embeddings=True),
    "qwen3-1.7b": dict(model_type="qwen3", vocab_size=151936, hidden_size=2048, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=6144,
                       tie_word_embeddings=True),
    "qwen3-8b": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=12288,
                     tie_word_embeddings=False),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, intermediate_size=8192,
                         tie_word_embeddings=True),
    "llama-3.2-3b": dict(model_type="llama", vocab_size=128256, hidden_size=3072, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, intermediate_size=8192,
                         tie_word_embeddings=True),
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=14336,
                         tie_word_embeddings=False),
}


def _hf_count(published: dict) -> int:
  config = transformers.AutoConfig.for_model(**published)
  with torch.device("meta"):
    model = transformers.AutoModelForCausalLM.from_config(config)
  return sum(p.numel() for p in model.parameters())  # tied weights are one parameter


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_param_count_equals_published_shapes(name):
  cfg = jm.presets.get(name)
  assert jm.param_count(cfg) == _hf_count(PUBLISHED[name])
  abstract = nnx.eval_shape(lambda: jm.Decoder(cfg, rngs=nnx.Rngs(0)))
  leaves = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))]
  assert sum(int(np.prod(x.shape)) for x in leaves) == jm.param_count(cfg)


def test_benchmark_preset_is_the_benchmarks_md_workload():
  cfg = jm.presets.get("bench")
  assert 4.0e6 < jm.param_count(cfg) < 4.4e6


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match="unknown model preset 'qwen9'.*tiny"):
    jm.presets.get("qwen9")
