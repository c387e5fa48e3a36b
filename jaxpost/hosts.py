"""Getting values off the devices correctly when arrays span several processes (multi-host pods).

`np.asarray` on an array with shards on another host raises. Batch-sharded results (rollouts, per-row log-probs)
come back as this process's own rows (`local_rows`), so each host decodes and scores what it generated; whole
values (a model to export, evaluation outputs) as the full array on every process (`to_host`); scalars that must
agree across hosts through `global_max` / `global_sum`. With one process each is a plain copy.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_main() -> bool:
  """Whether this is process 0, the one that writes shared files (exports, plots, summaries)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process gets here (a no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def to_host(x) -> np.ndarray:
  """The whole of `x` as a numpy array on every process (gathered from the other hosts when needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def local_rows(x) -> np.ndarray:
  """The rows (leading axis) of a batch-sharded `x` that this process's devices hold, in global order: the rows
  it contributed with `jax.make_array_from_process_local_data`. The whole array with one process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  pieces = {}
  for shard in x.addressable_shards:
    start = (shard.index[0].start or 0) if shard.index else 0
    pieces.setdefault(start, shard.data)  # tensor-axis replicas of the same rows: keep one
  return np.concatenate([np.asarray(pieces[k]) for k in sorted(pieces)], axis=0)


def global_max(value: int) -> int:
  """The largest `value` over all processes (e.g. a padded width every host must agree on)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def global_sum(value) -> np.ndarray:
  """`value` (a number or an array) summed over all processes."""
  if jax.process_count() == 1:
    return np.asarray(value)
  return np.sum(multihost_utils.process_allgather(np.asarray(value)), axis=0)
