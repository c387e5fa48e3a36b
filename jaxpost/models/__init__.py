"""Decoder models (Llama 3 / Qwen2 / Qwen3), KV caches, presets and Hugging Face checkpoint I/O."""

from jaxpost.models import presets
from jaxpost.models.config import ModelConfig, RopeScaling, param_count
from jaxpost.models.decoder import Decoder
from jaxpost.models.dms import DMSConfig, SequenceEviction
from jaxpost.models.dms_cache import DMSCacheFactory, DMSKVCache, capacity_for_budget
from jaxpost.models.hf_io import (CheckpointError, Pretrained, config_from_hf, config_to_hf, from_pretrained,
                                  save_pretrained)
from jaxpost.models.kv_cache import DenseKVCache, KVCache

__all__ = [
    "CheckpointError", "Pretrained", "DMSCacheFactory", "DMSConfig", "DMSKVCache", "Decoder", "DenseKVCache", "KVCache",
    "ModelConfig", "RopeScaling", "SequenceEviction", "capacity_for_budget", "config_from_hf", "config_to_hf",
    "from_pretrained", "param_count", "presets", "save_pretrained",
]
