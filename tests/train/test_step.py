"""The jitted train step: sharded == single device, one trace for many steps, micro-batches == full batch."""

import functools

import jax
import numpy as np
import pytest

from jaxpost.train import (MeshConfig, OptimizerConfig, accumulate_gradients, batch_sharding, create_train_state,
                           make_mesh, make_train_step, param_shardings, split_model)
from tests.train.helpers import random_batch, tiny_model, xent_loss

OPT = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, total_steps=10, weight_decay=0.1)
GRAPHDEF, HOST_PARAMS = split_model(tiny_model())


def _setup(mesh, optimizer=OPT, loss_fn=xent_loss, num_microbatches=1):
  graphdef = GRAPHDEF
  params = jax.device_put(HOST_PARAMS, param_shardings(HOST_PARAMS, mesh))
  state = create_train_state(params, optimizer=optimizer, mesh=mesh, seed=1)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step = make_train_step(graphdef=graphdef, loss_fn=loss_fn, optimizer=optimizer, mesh=mesh,
                         state_shardings=shardings, num_microbatches=num_microbatches)
  return graphdef, state, step


def _loss_and_grads(mesh, batch):
  params = jax.device_put(HOST_PARAMS, param_shardings(HOST_PARAMS, mesh))
  grads_fn = jax.jit(functools.partial(accumulate_gradients, graphdef=GRAPHDEF, loss_fn=xent_loss),
                     in_shardings=(param_shardings(params, mesh), batch_sharding(mesh), None))
  loss, _, grads = grads_fn(params, batch, jax.random.key(0))
  return loss, grads, params


def _assert_sharded_by_rules(params, mesh):
  expected = _shard_shapes(mesh.shape["fsdp"], mesh.shape["tensor"])
  checked = 0
  for path, param in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(str(getattr(k, "key", "")) for k in path).rstrip("/")
    kind = next(k for k in expected if name.endswith(k))
    assert {s.data.shape for s in param.addressable_shards} == {expected[kind]}, name
    checked += 1
  assert checked == 11 + 3


def _shard_shapes(f, t):
  """Per-device block of each parameter kind of the tiny model (D=32, H*Dh=32, K*Dh=16, F=64, V=64)."""
  return {
      "embed/embedding": (64 // (f * t), 32), "lm_head/weight": (64 // t, 32 // f),
      "attn/q_proj/weight": (32 // t, 32 // f), "attn/k_proj/weight": (16 // t, 32 // f),
      "attn/v_proj/weight": (16 // t, 32 // f), "attn/o_proj/weight": (32 // f, 32 // t),
      "mlp/gate_proj/weight": (64 // t, 32 // f), "mlp/up_proj/weight": (64 // t, 32 // f),
      "mlp/down_proj/weight": (32 // f, 64 // t), "q_norm/scale": (8,), "k_norm/scale": (8,),
      "attn_norm/scale": (32,), "mlp_norm/scale": (32,), "final_norm/scale": (32,),
  }


@pytest.mark.parametrize("mesh_cfg", [MeshConfig(fsdp=4, tensor=2), MeshConfig(data=2, fsdp=4)])
def test_sharded_step_equals_single_device(mesh_cfg):
  batch = random_batch(0, batch=8)
  ref_loss, ref_grads, _ = _loss_and_grads(make_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1]), batch)
  mesh = make_mesh(mesh_cfg)
  loss, grads, params = _loss_and_grads(mesh, batch)
  np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), grads, ref_grads)
  _assert_sharded_by_rules(params, mesh)


def test_step_is_traced_once_over_ten_steps():
  traces = []

  def counting_loss(model, batch, rng):
    traces.append(1)  # runs only while tracing
    return xent_loss(model, batch, rng)

  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  _, state, step = _setup(mesh, loss_fn=counting_loss)
  for i in range(10):
    state, metrics = step(state, random_batch(i))
  assert int(state.step) == 10 and np.isfinite(metrics["loss"])
  assert len(traces) == 1
  _assert_sharded_by_rules(state.params, mesh)  # the step's outputs keep the rules' shardings
  mu = state.opt_state[1][0].mu  # clip, then AdamW's (scale_by_adam, ...) chain
  _assert_sharded_by_rules(mu, mesh)


def test_four_micro_batches_equal_one_full_batch_step():
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  # Rows have different numbers of loss tokens, so a plain mean of micro-batch means would differ.
  batch = random_batch(3, batch=32)
  _, state_full, step_full = _setup(mesh)
  _, state_micro, step_micro = _setup(mesh, num_microbatches=4)
  state_full, metrics_full = step_full(state_full, batch)
  state_micro, metrics_micro = step_micro(state_micro, batch)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), state_micro.params,
               state_full.params)
  for name in ("loss", "grad_norm", "loss_denominator"):
    np.testing.assert_allclose(metrics_micro[name], metrics_full[name], rtol=1e-6)
  unequal = [float(batch["loss_mask"][m::4, 1:].sum()) for m in range(4)]
  assert len(set(unequal)) > 1  # the weighting by denominators was really exercised
