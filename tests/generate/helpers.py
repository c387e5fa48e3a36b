"""Small models and an independent numpy reference of top-k / top-p for the generation tests."""

import numpy as np
from flax import nnx

import jaxpost.models as jm


def tiny_model(seed: int = 0, *, vocab: int = 53, logit_scale: float = 1.0, **overrides) -> jm.Decoder:
  """A 2-layer Qwen3-style decoder; `logit_scale` multiplies the output head so the logits are spread out."""
  cfg = jm.ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                       intermediate_size=64, qk_norm=True, **overrides)
  model = jm.Decoder(cfg, rngs=nnx.Rngs(seed))
  model.lm_head.weight[...] = model.lm_head.weight[...] * logit_scale
  return model


def reference_probs(logits_V: np.ndarray, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
  """softmax(logits / T) restricted to top-k then top-p and renormalised, computed the Hugging Face way
  (ascending sort, drop the tokens whose cumulative mass is <= 1 - top_p)."""
  scaled = logits_V.astype(np.float64) / temperature
  keep = np.ones(scaled.shape, bool)
  if top_k:
    keep[np.argsort(-scaled)[top_k:]] = False
  probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
  probs /= probs.sum()
  if top_p < 1.0:
    order = np.argsort(probs)  # ascending
    cumulative = np.cumsum(probs[order])
    drop = cumulative <= 1.0 - top_p
    drop[-1] = False
    probs[order[drop]] = 0.0
    probs /= probs.sum()
  return probs


def teacher_forced_logits(model: jm.Decoder, rollout) -> np.ndarray:
  """Logits [N, C, V] predicting each completion token, from one full forward over prompt ++ completion."""
  tokens = np.concatenate([rollout.prompt_tokens, rollout.completion_tokens], axis=1)
  segment_ids = np.concatenate([rollout.prompt_mask, rollout.completion_mask], axis=1)
  positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0)
  logits = np.asarray(model(tokens, positions=positions, segment_ids=segment_ids), np.float64)
  p = rollout.prompt_tokens.shape[1]
  return logits[:, p - 1:-1]


def log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
