"""Generation: a jitted prefill + `lax.while_loop` decode over a pluggable KV cache, returning RL rollouts."""

from jaxpost.generate.config import SamplingConfig
from jaxpost.generate.rollout import Rollout, decode_completions, left_pad
from jaxpost.generate.sampler import CacheFactory, generate
from jaxpost.generate.sampling import choose_tokens, truncated_logits

__all__ = ["CacheFactory", "Rollout", "SamplingConfig", "choose_tokens", "decode_completions", "generate",
           "left_pad", "truncated_logits"]
