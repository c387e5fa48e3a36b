"""Partition rules: parameter path (regex) -> PartitionSpec over the mesh axes, and the batch sharding.

A path is the '/'-joined pytree path of a leaf, e.g. `layers/3/attn/q_proj/weight`; optimizer-state leaves carry
the parameter path as a suffix (`0/mu/layers/3/attn/q_proj/weight`), so the same rules shard Adam's moments like
their parameters. The first rule whose regex is found in the path wins; leaves no rule matches are replicated.

FSDP shards every matrix's large (model-dim or vocab) dimension over `fsdp`; tensor parallelism splits attention
heads (q/k/v output dimension, o_proj input dimension) and the MLP hidden dimension (gate/up output, down input)
over `tensor`. The embedding table is split by vocabulary over both (its model dimension stays whole, which keeps
the looked-up activations batch-sharded instead of model-dim-sharded). A dimension whose size is not divisible by its mesh axes is replicated instead (for that dimension
only), so odd shapes such as 2 KV heads on a tensor axis of 4 still work, at the price of duplicated memory.
"""

import functools
import re
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, P]]

DEFAULT_RULES: Rules = (
    (r"(^|/)embed/embedding$", P(("fsdp", "tensor"), None)),  # [V, D]: vocab-parallel lookup
    (r"(^|/)lm_head/weight$", P("tensor", "fsdp")),  # [V, D]
    (r"/attn/(q_proj|k_proj|v_proj)/weight$", P("tensor", "fsdp")),  # [heads*Dh, D]
    (r"/attn/(q_proj|k_proj|v_proj)/bias$", P("tensor")),  # [heads*Dh]
    (r"/attn/o_proj/weight$", P("fsdp", "tensor")),  # [D, H*Dh]
    (r"/mlp/(gate_proj|up_proj)/weight$", P("tensor", "fsdp")),  # [F, D]
    (r"/mlp/down_proj/weight$", P("fsdp", "tensor")),  # [D, F]
    (r"(^|/)(scale|bias)$", P()),  # norms and other biases
)

BATCH_AXES = ("data", "fsdp")


def path_str(path: tuple) -> str:
  """'/'-joined keys of a pytree path, without the `.value` attribute of nnx Variables."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != "value":
        parts.append(key.name)
    elif isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return "/".join(parts)


def _axis_size(mesh: Mesh, axes) -> int:
  names = axes if isinstance(axes, tuple) else (axes,)
  size = 1
  for name in names:
    size *= mesh.shape[name]
  return size


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> P:
  """The PartitionSpec of one leaf: the first matching rule, with indivisible dimensions replicated."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      break
  else:
    return P()
  if len(spec) > len(shape):
    raise ValueError(f"partition rule {pattern!r} has {len(spec)} dims but {path!r} has shape {shape}")
  dims = [axes if axes is None or size % _axis_size(mesh, axes) == 0 else None for axes, size in zip(spec, shape)]
  return P(*dims)


def param_shardings(state_shapes, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """A NamedSharding for every leaf of `state_shapes` (params, optimizer state or a whole TrainState).

  `state_shapes` may hold arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`); the result has its structure.
  """

  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_str(path), tuple(leaf.shape), mesh, rules))

  return jax.tree_util.tree_map_with_path(one, state_shapes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: the leading (batch) dimension over ("data", "fsdp"), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch: dict, mesh: Mesh) -> dict[str, jax.Array]:
  """Host batch arrays -> global arrays sharded by `batch_sharding`; each process passes its own rows."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def traced_on(mesh: Mesh, fn):
  """`fn` traced with `mesh` as the context mesh: kernels that must run per shard under `shard_map` (splash
  attention on TPU, which GSPMD cannot partition) find the mesh there."""

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced
