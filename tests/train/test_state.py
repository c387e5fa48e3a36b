"""Optimizer: schedule values, weight-decay mask, trainable subset, clipping; sharded TrainState creation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import Pretrained, presets, save_pretrained
from jaxpost.train import (MeshConfig, OptimizerConfig, create_train_state, init_params, make_mesh, make_optimizer,
                           make_schedule, make_train_step, param_shardings, path_str, split_model)
from tests.train.helpers import TINY, random_batch, tiny_model, xent_loss


def test_warmup_cosine_and_constant_schedules_match_the_formulas():
  cfg = OptimizerConfig(learning_rate=0.3, warmup_steps=4, total_steps=20, end_lr_ratio=0.1)
  lr = make_schedule(cfg)
  for t in range(0, 25):
    if t < 4:
      expected = 0.3 * t / 4
    else:
      frac = min(t - 4, 16) / 16
      expected = 0.03 + (0.3 - 0.03) * 0.5 * (1 + math.cos(math.pi * frac))
    np.testing.assert_allclose(lr(t), expected, rtol=1e-5, atol=1e-7)
  const = make_schedule(OptimizerConfig(learning_rate=0.3, schedule="constant", warmup_steps=3, total_steps=9))
  np.testing.assert_allclose([const(t) for t in range(6)], [0, 0.1, 0.2, 0.3, 0.3, 0.3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="linear"), "schedule"), (dict(warmup_steps=5, total_steps=4), "warmup_steps"),
    (dict(clip_norm=0.0), "clip_norm"), (dict(learning_rate=-1.0), "learning_rate"),
])
def test_optimizer_config_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    OptimizerConfig(**kwargs)


def test_weight_decay_skips_norms_biases_and_vectors():
  cfg = OptimizerConfig(learning_rate=0.5, schedule="constant", warmup_steps=0, weight_decay=0.1, clip_norm=None)
  _, params = split_model(tiny_model(cfg=TINY.replace(qkv_bias=True)))
  tx = make_optimizer(cfg)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)  # zero gradients: the update is the decay alone
  seen = set()
  for (path, u), p in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params)):
    name = path_str(path)
    decayed = name.endswith("weight") or name.endswith("embedding")
    np.testing.assert_allclose(u, -0.5 * 0.1 * p if decayed else np.zeros_like(p), atol=1e-7, err_msg=name)
    seen.add(name.rsplit("/", 1)[-1])
  assert {"bias", "scale", "weight", "embedding"} <= seen


def test_trainable_subset_updates_only_matching_params_and_clips_their_norm():
  cfg = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=5, trainable=r"/mlp/(up|down)_proj/",
                        clip_norm=1e-3)
  mesh = make_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1])
  graphdef, before = split_model(tiny_model())
  params = jax.device_put(before, jax.devices()[0])
  state = create_train_state(params, optimizer=cfg, mesh=mesh)
  # Frozen params have no Adam moments: only the two trained matrices appear in the optimizer state.
  moment_shapes = sorted(x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim == 2)
  assert moment_shapes == sorted([(32, 64), (64, 32)] * 2)
  step = make_train_step(graphdef=graphdef, loss_fn=xent_loss, optimizer=cfg, mesh=mesh,
                         state_shardings=jax.tree.map(lambda x: x.sharding, state))
  batch = random_batch(0)
  state, metrics = step(state, batch)

  grads = jax.jit(jax.grad(lambda p: xent_loss(nnx.merge(graphdef, p), batch, None)[0]))(before)
  trained_norm = 0.0
  for (path, new), old, g in zip(jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(before),
                                 jax.tree.leaves(grads)):
    name = path_str(path)
    if "mlp/up_proj" in name or "mlp/down_proj" in name:
      assert np.abs(np.asarray(new) - old).max() > 1e-4, name
      trained_norm += float(np.sum(np.square(g)))
    else:
      np.testing.assert_array_equal(new, old, err_msg=name)
  np.testing.assert_allclose(metrics["grad_norm"], math.sqrt(trained_norm), rtol=1e-5)
  assert float(metrics["grad_norm"]) > 1e-3  # so clipping was active


def test_init_params_creates_each_shard_in_place():
  mesh = make_mesh(MeshConfig(fsdp=8))
  cfg = presets.get("tiny", vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                    intermediate_size=64)
  _, params = init_params(lambda: tiny_model(cfg=cfg), mesh=mesh)
  _, reference = split_model(tiny_model(cfg=cfg))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), params, reference)
  assert params["embed"]["embedding"].sharding.shard_shape((64, 32)) == (8, 32)


def test_init_params_reads_a_pretrained_checkpoint_shard_by_shard(tmp_path):
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  save_pretrained(tiny_model(), str(tmp_path))
  source = Pretrained(str(tmp_path))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), split_model(source.abstract())[1]) == jax.tree.map(
      lambda x: (x.shape, x.dtype), split_model(tiny_model())[1])
  _, params = init_params(source, mesh=mesh)
  _, reference = split_model(tiny_model())
  jax.tree.map(np.testing.assert_array_equal, params, reference)
  want = param_shardings(reference, mesh)
  jax.tree.map(assert_equal_sharding, params, want)


def assert_equal_sharding(x, sharding):
  """The array is laid out as `sharding` says (same devices, same shard of each)."""
  assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)
