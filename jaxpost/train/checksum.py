"""Checksums of every array in a pytree, stored with a checkpoint and compared on restore.

Orbax writes arrays without a content hash, so flipped bytes in a checkpoint's data files restore silently. The
checksum is a position-weighted sum of each array's bits as uint32 (odd weights, wrapping arithmetic): any
change of one word changes it, and it is computed on device, shard-parallel, without copying the array to the host.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

_GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative hash constant: odd, so every weight below is odd


def _as_words(x: jax.Array) -> jax.Array:
  """`x`'s bits as a flat uint32 vector (narrower dtypes are widened bit-exactly, wider ones split)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = x.dtype.itemsize
  if width == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
  return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
  words = _as_words(x)
  weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(words * (weights * _GOLDEN), dtype=jnp.uint32)


def tree_checksums(tree) -> dict[str, int]:
  """{"a/b/c": checksum} for every array leaf of `tree` (paths as Orbax flattens them)."""
  flat = {"/".join(map(str, k)): v for k, v in ocp.tree.to_flat_dict(tree).items()}
  # One program for the whole tree: one dispatch, and no concurrent collectives (which can deadlock on CPU meshes).
  sums = jax.device_get(_tree_checksums(flat))
  return {k: int(v) for k, v in sums.items()}


@jax.jit
def _tree_checksums(flat: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {k: _checksum(v) for k, v in flat.items()}


def mismatches(stored: dict[str, int], actual: dict[str, int]) -> list[str]:
  """Paths whose checksum differs from the stored one (a path missing on either side counts as different)."""
  return sorted(k for k in stored.keys() | actual.keys() if stored.get(k) != actual.get(k))
