"""Tiny random Hugging Face models built with `transformers` + torch, the independent reference for parity tests."""

import torch
import transformers

TINY_SHAPES = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, intermediate_size=96, max_position_embeddings=512)

EXTRA = {
    "llama": dict(rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=64)),
    "qwen2": dict(rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen3": dict(rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
}


def build_hf_model(model_type: str, seed: int = 0) -> transformers.PreTrainedModel:
  """A random float32 model whose weights (norms included) are far from their init, so mapping errors show."""
  torch.manual_seed(seed)
  config = transformers.AutoConfig.for_model(model_type, **TINY_SHAPES, **EXTRA[model_type])
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  return model


def hf_logits(model, tokens, attention_mask=None, position_ids=None):
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                attention_mask=None if attention_mask is None else torch.as_tensor(attention_mask),
                position_ids=None if position_ids is None else torch.as_tensor(position_ids, dtype=torch.long))
  return out.logits.float().numpy()
