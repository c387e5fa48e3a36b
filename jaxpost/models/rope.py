"""Rotary position embeddings in the split-half convention of Hugging Face Llama / Qwen."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost.models.config import RopeScaling


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
  """RoPE positions of left-padded rows: each real token's index among its row's real tokens (padding at 0)."""
  return jnp.maximum(jnp.cumsum(jnp.asarray(mask_BxT, jnp.int32), axis=1) - 1, 0)


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
  """Per-pair rotation frequencies [head_dim // 2], with Llama 3 scaling when given."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if scaling is None:
    return inv_freq.astype(np.float32)
  low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
  high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


class Rotary(NamedTuple):
  """cos and sin of every position's rotation angles, [B, T, 1, head_dim // 2] each (the 1 broadcasts over heads)."""

  cos: jax.Array
  sin: jax.Array


def rotary(positions_BxT: jax.Array, inv_freq: np.ndarray) -> Rotary:
  """The rotations of `positions`: the cos and sin of their angles."""
  angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  return Rotary(cos=jnp.cos(angles_BxTxF)[:, :, None, :], sin=jnp.sin(angles_BxTxF)[:, :, None, :])


def apply_rope(x_BxTxNxD: jax.Array, rot: Rotary) -> jax.Array:
  """Rotates the first and second halves of each head as (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
  x = x_BxTxNxD.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([x1 * rot.cos - x2 * rot.sin, x2 * rot.cos + x1 * rot.sin], axis=-1)
  return rotated.astype(x_BxTxNxD.dtype)
