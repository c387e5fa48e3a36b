"""Generation sharded over 8 fake devices (rows over data x fsdp, heads over tensor) equals one device."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxpost.generate import SamplingConfig, generate, left_pad
from jaxpost.train import MeshConfig, make_mesh
from jaxpost.train.partition import batch_sharding, param_shardings
from tests.generate.helpers import tiny_model


def test_sharded_generation_equals_single_device():
  assert jax.device_count() == 8
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  model = tiny_model(logit_scale=8.0)
  tokens, mask = left_pad([[3, 8, 1, 30, 2, 7], [11, 5], [40, 41, 42, 43], [9, 9, 9]])
  keys = jax.random.split(jax.random.key(4), 4)
  cfg = SamplingConfig(completion_len=12, temperature=0.9, top_k=30, top_p=0.95, n=2, stop_ids=(4,))
  single = generate(model, tokens, mask, cfg=cfg, rng=keys)

  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, param_shardings(state, mesh)))
  q_weight = model.layers[0].attn.q_proj.weight[...]
  assert q_weight.sharding.spec == P("tensor", "fsdp") and len(q_weight.sharding.device_set) == 8
  rows = batch_sharding(mesh)
  sharded = generate(model, jax.device_put(tokens, rows), jax.device_put(mask, rows), cfg=cfg,
                     rng=jax.device_put(keys, rows), mesh=mesh)
  assert sharded.completion_tokens.sharding.spec[0] == ("data", "fsdp"), sharded.completion_tokens.sharding
  np.testing.assert_array_equal(np.asarray(sharded.completion_tokens), np.asarray(single.completion_tokens))
  np.testing.assert_array_equal(np.asarray(sharded.completion_mask), np.asarray(single.completion_mask))
  np.testing.assert_allclose(np.asarray(sharded.logps), np.asarray(single.logps), atol=1e-5)
