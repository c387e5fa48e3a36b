"""Attention: grouped-query attention against a per-head numpy reference (the decode step and longer blocks), and
every full-sequence kernel of `sequence_attention` against its "reference" kernel, values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpost.models import attention, dms
from jaxpost.models.platform_attention import cudnn_attention, splash_attention


def _reference(q_BxTxHxD, k_BxKxSxD, v_BxKxSxD, mask_BxTxS, bias_BxKxTxS):
  b, t, h, d = q_BxTxHxD.shape
  group = h // k_BxKxSxD.shape[1]
  out = np.zeros_like(q_BxTxHxD, dtype=np.float64)
  for i in range(b):
    for head in range(h):
      kv = head // group
      scores = q_BxTxHxD[i, :, head] @ k_BxKxSxD[i, kv].T / np.sqrt(d) + bias_BxKxTxS[i, kv]
      scores = np.where(mask_BxTxS[i], scores, -1e30)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      out[i, :, head] = (probs / probs.sum(-1, keepdims=True)) @ v_BxKxSxD[i, kv]
  return out


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_major_attention_matches_a_per_head_reference(t, with_bias):
  rng = np.random.RandomState(t)
  b, h, k, s, d = 2, 6, 2, 9, 8
  q, keys, values = rng.randn(b, t, h, d), rng.randn(b, k, s, d), rng.randn(b, k, s, d)
  mask = rng.rand(b, t, s) > 0.3
  mask[..., 0] = True
  bias = rng.randn(b, k, t, s) if with_bias else np.zeros((b, k, t, s))
  keys_d_major = np.swapaxes(keys, 2, 3)  # the cache's key layout [B, K, D, S]
  got = attention.head_major_attention(q.astype(np.float32), keys_d_major.astype(np.float32),
                                       values.astype(np.float32), mask, bias.astype(np.float32) if with_bias else None)
  np.testing.assert_allclose(np.asarray(got), _reference(q, keys, values, mask, bias), atol=1e-5, rtol=1e-5)


# --- sequence_attention: every kernel against "reference" ---

def _segments(layout: str, b: int, t: int) -> np.ndarray:
  """[B, T] segment ids: `packed` (several segments per row, one row ending in padding), `left` / `right` padding."""
  seg = np.ones((b, t), np.int32)
  if layout == "packed":
    seg[:, t // 3:] = 2
    seg[:, 2 * t // 3:] = 3
    seg[-1, -3:] = 0
  elif layout == "left":
    seg[:, : t // 4] = 0
    seg[0, : t // 2] = 0
  elif layout == "right":
    seg[:, -(t // 4):] = 0
  return seg


def _inputs(b, t, h, k, d, dtype=jnp.float32, seed=0):
  """(q, k, v, negative key bias [B,T,K], cotangent of the output)."""
  rng = np.random.RandomState(seed)
  q, keys, values, cotangent = (jnp.asarray(rng.randn(b, t, n, d), dtype) for n in (h, k, k, h))
  bias = jnp.asarray(-2.0 * np.abs(rng.randn(b, t, k)), jnp.float32)
  return q, keys, values, bias, cotangent


@functools.partial(jax.jit, static_argnames=("implementation", "window", "block"))
def _out_and_grads(q, k, v, bias, cotangent, segment_ids, *, implementation, window, block):
  """(output, gradients of <output, cotangent> w.r.t. q, k, v and the key bias (None without one))."""

  def loss(q, k, v, bias):
    out = attention.sequence_attention(q, k, v, segment_ids, key_bias_BxTxK=bias, bias_window=window,
                                       implementation=implementation, block_size=block)
    return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32)), out

  grads, out = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, bias)
  return out, grads


def _assert_matches_reference(implementation, q, k, v, bias, cotangent, seg, *, window=0, block=8, tol=1e-5):
  got = _out_and_grads(q, k, v, bias, cotangent, seg, implementation=implementation, window=window, block=block)
  f32 = lambda x: None if x is None else x.astype(jnp.float32)
  want = _out_and_grads(*map(f32, (q, k, v, bias, cotangent)), seg, implementation="reference", window=window,
                        block=block)
  for name, g, w in zip(("out", "dq", "dk", "dv", "dbias"), jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), atol=tol, rtol=tol, err_msg=name)


@pytest.mark.parametrize("layout,window,t,block", [
    ("packed", None, 37, 8),  # T not a multiple of the block, five blocks
    ("packed", 2, 37, 8),  # DMS bias
    ("packed", 0, 37, 8),
    ("left", 2, 37, 8),
    ("right", 0, 37, 8),
    ("right", None, 37, 8),
    ("packed", 2, 32, 8),  # T a multiple of the block
    ("left", None, 20, 64),  # one block, larger than T
])
def test_blockwise_matches_reference_values_and_grads(layout, window, t, block):
  q, k, v, bias, cotangent = _inputs(2, t, 4, 2, 8)  # GQA: 4 query heads on 2 KV heads
  _assert_matches_reference("blockwise", q, k, v, None if window is None else bias, cotangent,
                            _segments(layout, 2, t), window=window or 0, block=block)


def test_blockwise_bfloat16_within_2e_2_of_the_float32_reference():
  """bf16 inputs: output and gradients within 2e-2 (absolute and relative) of the reference computed in float32 on
  the same bf16 values; the output stays bf16."""
  q, k, v, bias, cotangent = _inputs(2, 37, 4, 2, 8, dtype=jnp.bfloat16)
  out, _ = _out_and_grads(q, k, v, bias, cotangent, _segments("packed", 2, 37), implementation="blockwise",
                          window=2, block=8)
  assert out.dtype == jnp.bfloat16
  _assert_matches_reference("blockwise", q, k, v, bias, cotangent, _segments("packed", 2, 37), window=2, tol=2e-2)


def test_blockwise_on_sharded_inputs_matches_reference():
  """Batch over ("data", "fsdp") and heads over "tensor" on 8 devices: plain jnp ops, partitioned by GSPMD."""
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  q, k, v, bias, cotangent = _inputs(4, 37, 4, 2, 8)
  heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
  q, k, v, bias, cotangent = (jax.device_put(x, heads) for x in (q, k, v, bias, cotangent))
  seg = jax.device_put(_segments("packed", 4, 37), NamedSharding(mesh, P(("data", "fsdp"))))
  _assert_matches_reference("blockwise", q, k, v, bias, cotangent, seg, window=2)


def test_splash_in_the_pallas_interpreter_matches_reference_on_a_mesh():
  """The TPU kernel's wrapper (padding T=200 to 256, query scaling, GQA, segment ids, shard_map over 8 devices),
  run in the Pallas interpreter on CPU."""
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  q, k, v, _, cotangent = _inputs(4, 200, 4, 2, 16)
  seg = _segments("packed", 4, 200)
  seg[0] = _segments("left", 1, 200)[0]

  def grads(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

  got = grads(lambda q, k, v: splash_attention(q, k, v, seg, block_size=128, mesh=mesh, interpret=True))
  want = grads(lambda q, k, v: attention.sequence_attention(q, k, v, seg, implementation="reference"))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-5)


def test_the_per_key_bias_is_dms_delayed_eviction_bias():
  log_keep_BxTxK = -jnp.abs(jax.random.normal(jax.random.key(0), (2, 11, 3)))
  for window in (0, 2):
    np.testing.assert_array_equal(attention.dense_key_bias(dms.successor_bias(log_keep_BxTxK), window),
                                  dms.delayed_eviction_bias(log_keep_BxTxK, window))


def _grad_temp_bytes(t: int, *, b=1, h=2, k=1, d=16, block=256) -> int:
  def loss(q, keys, values, bias):
    out = attention.sequence_attention(q, keys, values, jnp.ones((b, t), jnp.int32), key_bias_BxTxK=bias,
                                       bias_window=4, implementation="blockwise", block_size=block)
    return jnp.sum(out)

  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((b, t, h, d), (b, t, k, d), (b, t, k, d), (b, t, k))]
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(*shapes).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_forward_and_backward_hold_no_txt_array():
  """Temp memory of the gradient: far below one float32 [B, H, T, T] score array, and doubling T at most roughly
  doubles it (a [T, T] buffer would quadruple it)."""
  t, b, h = 2048, 1, 2
  scores_bytes = b * h * t * t * 4  # 32 MiB
  temp_t, temp_2t = _grad_temp_bytes(t), _grad_temp_bytes(2 * t)
  assert temp_t < scores_bytes / 4, (temp_t, scores_bytes)
  assert temp_2t < 2.5 * temp_t, (temp_t, temp_2t)


# --- choosing a kernel ---

@pytest.mark.parametrize("implementation,seq_len,has_bias,platform,expected", [
    ("auto", 512, False, "cpu", "reference"),
    ("auto", 513, False, "cpu", "blockwise"),
    ("auto", 513, True, "cpu", "blockwise"),
    ("auto", 128, False, "tpu", "splash"),
    ("auto", 128, True, "tpu", "blockwise"),
    ("auto", 4096, False, "gpu", "blockwise"),
    ("reference", 4096, True, "tpu", "reference"),
    ("cudnn", 64, False, "gpu", "cudnn"),
])
def test_resolve_attention(implementation, seq_len, has_bias, platform, expected):
  assert attention.resolve_attention(implementation, seq_len=seq_len, block_size=512, has_bias=has_bias,
                                     platform=platform) == expected


def test_unknown_implementation_names_the_valid_ones():
  q, k, v, _, _ = _inputs(1, 4, 2, 1, 8)
  with pytest.raises(ValueError, match=r"'flash' is not one of \('auto', 'reference', 'blockwise'"):
    attention.sequence_attention(q, k, v, None, implementation="flash")


@pytest.mark.parametrize("implementation", ["splash", "cudnn"])
def test_platform_kernels_refuse_a_key_bias(implementation):
  q, k, v, bias, _ = _inputs(1, 4, 2, 1, 8)
  with pytest.raises(ValueError, match=f"'{implementation}' takes no key_bias"):
    attention.sequence_attention(q, k, v, None, key_bias_BxTxK=bias, implementation=implementation)


def test_cudnn_refuses_segment_ids_and_splash_odd_blocks():
  q, k, v, _, _ = _inputs(1, 4, 2, 1, 8)
  with pytest.raises(ValueError, match="'cudnn' supports no segment ids"):
    cudnn_attention(q, k, v, jnp.ones((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="block_size must be a multiple of 128"):
    splash_attention(q, k, v, jnp.ones((1, 4), jnp.int32), block_size=100)
