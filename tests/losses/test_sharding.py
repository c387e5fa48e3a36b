"""Losses under a batch sharded over 8 fake CPU devices equal the unsharded values (sums and denominators)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxpost.losses import make_sft_loss, policy_loss
from tests.losses import fakes


def _shard_rows(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("data")))


def test_policy_and_sft_losses_are_sharding_invariant():
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rng = np.random.default_rng(0)
  logps = jnp.asarray(np.log(rng.uniform(0.1, 0.9, (8, 5))), jnp.float32)
  old = logps + jnp.asarray(rng.normal(scale=0.3, size=(8, 5)), jnp.float32)
  adv = jnp.asarray(rng.normal(size=8), jnp.float32)
  mask = jnp.asarray(np.arange(5)[None] < rng.integers(0, 6, 8)[:, None], jnp.int32)
  arrays = (logps, old, adv, mask)
  for loss_type in ("grpo", "bnpo", "dr_grpo"):
    fn = jax.jit(jax.value_and_grad(lambda lp, o, a, m: policy_loss(lp, o, a, m, loss_type=loss_type)[0]))
    want = fn(*arrays)
    got = fn(*_shard_rows(arrays, mesh))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-8)

  params = fakes.init_params(0)
  batch = fakes.sft_unpacked((fakes.EXAMPLES * 3)[:8])
  sft = jax.jit(lambda p, b: make_sft_loss()(fakes.bind(p), b, None)[0])
  np.testing.assert_allclose(sft(params, _shard_rows(batch, mesh)), sft(params, batch), rtol=1e-6)
