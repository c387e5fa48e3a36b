"""The platform kernels behind `sequence_attention`: Pallas splash attention on TPU, cuDNN fused attention on GPU.

Neither runs on CPU, and neither takes the DMS key bias. Letters: B batch, T tokens, H query heads, K KV heads,
D head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

_LANES = 128  # splash's sequence blocks are multiples of the TPU lane width
_BATCH_AXES = ("data", "fsdp")
_HEAD_AXIS = "tensor"


def splash_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                     segment_ids_BxT: jax.Array, *, block_size: int = 512,
                     mesh: jax.sharding.Mesh | None = None, interpret: bool = False) -> jax.Array:
  """Causal attention within segments through the splash kernel (GQA native: query head h reads KV head h // G).

  T is padded to a multiple of the kernel block (the padded keys come after every real query, so causality hides
  them); any head dim compiles (64, 96, 128, 256 checked ahead of time for v5p). A Pallas call cannot be split by
  GSPMD, so on a mesh (`mesh`, else the abstract mesh in context, if it has axes) the kernel runs under
  `shard_map`: batch over ("data", "fsdp"), heads over "tensor". Queries are scaled by D**-0.5 before the kernel,
  which does not scale. `interpret` runs the kernel in the Pallas interpreter (any platform: tests, debugging).
  """
  _, t, _, d = q_BxTxHxD.shape
  if block_size % _LANES:
    raise ValueError(f"splash attention: block_size must be a multiple of {_LANES}, got {block_size}")
  block = min(block_size, _round_up(t, _LANES))
  t_pad = _round_up(t, block) - t
  pad = lambda x: jnp.pad(x, ((0, 0), (0, t_pad), (0, 0), (0, 0)))
  q_BxHxTxD = jnp.swapaxes(pad(q_BxTxHxD * jnp.asarray(d ** -0.5, q_BxTxHxD.dtype)), 1, 2)
  k_BxKxTxD, v_BxKxTxD = jnp.swapaxes(pad(k_BxTxKxD), 1, 2), jnp.swapaxes(pad(v_BxTxKxD), 1, 2)
  segment_ids_BxT = jnp.pad(segment_ids_BxT, ((0, 0), (0, t_pad)))
  run = lambda *args: _splash_rows(*args, block=block, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if mesh.axis_names:
    batch = tuple(a for a in _BATCH_AXES if a in mesh.axis_names) or None
    heads = _HEAD_AXIS if _HEAD_AXIS in mesh.axis_names else None
    spec = P(batch, heads)
    run = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, P(batch)), out_specs=spec, check_vma=False)
  out_BxHxTxD = run(q_BxHxTxD, k_BxKxTxD, v_BxKxTxD, segment_ids_BxT)
  return jnp.swapaxes(out_BxHxTxD, 1, 2)[:, :t]


def _splash_rows(q_BxHxTxD, k_BxKxTxD, v_BxKxTxD, segment_ids_BxT, *, block: int, interpret: bool) -> jax.Array:
  """The splash kernel over the rows (and heads) this device holds, vmapped over rows."""
  h, t = q_BxHxTxD.shape[1:3]
  mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * h)
  # Separate dq and dkv backward kernels: the fused one keeps a [T / block, H, T, D] unreduced dq, O(T^2) memory.
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
  row = lambda q, k, v, seg: kernel(q, k, v, segment_ids=splash.SegmentIds(q=seg, kv=seg))
  return jax.vmap(row)(q_BxHxTxD, k_BxKxTxD, v_BxKxTxD, segment_ids_BxT)


def cudnn_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                    segment_ids_BxT: jax.Array | None) -> jax.Array:
  """Causal attention through cuDNN's fused kernel (bf16 / fp16, GQA native), one causal segment per row.

  `jax.nn.dot_product_attention(implementation="cudnn")` masks by causality and per-row lengths only (right
  padding; packing is not in its public API), so it matches the reference only without segment ids.
  """
  if segment_ids_BxT is not None:
    raise ValueError("sequence_attention: 'cudnn' supports no segment ids (packing or padding); pass "
                     "segment_ids_BxT=None for one causal segment per row, or use 'blockwise'")
  return jax.nn.dot_product_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, is_causal=True, implementation="cudnn")


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple
