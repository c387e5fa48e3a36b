"""RL algorithms by name: each registered module gives the method and the loss its pieces would give."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import losses, rl


def test_every_algorithm_is_registered_once_by_its_module():
  assert rl.names() == ("grpo", "luffy", "prefix_rft")
  with pytest.raises(ValueError, match="registered twice"):
    rl.register("grpo")(lambda policy, options: None)
  with pytest.raises(ValueError, match=r"unknown RL algorithm 'ppo'; registered: grpo, luffy, prefix_rft"):
    rl.build("ppo", losses.GRPOConfig())


def test_built_algorithms_carry_their_options_into_method_and_loss():
  policy = losses.GRPOConfig(loss_type="dr_grpo", beta=0.0)
  prefix = rl.build("prefix_rft", policy, {"n_prefix": 2, "advantage_mode": "paper"})
  assert isinstance(prefix.method, rl.PrefixRFTMethod) and prefix.method.cfg.n_prefix == 2
  assert prefix.method.cfg.policy == policy and hasattr(prefix.loss_fn, "counts")
  grpo = rl.build("grpo", policy, {"estimator": "rloo"})
  rewards = np.asarray([1.0, 0.0, 0.0, 1.0])
  np.testing.assert_allclose(grpo.method.advantages(rewards, None, 4),
                             np.asarray(losses.group_advantages(jnp.asarray(rewards), 4, estimator="rloo")))
  luffy = rl.build("luffy", policy, {"gamma": 0.3})
  assert luffy.method.needs_demonstrations and luffy.method.prefix_lengths(None, np.asarray([5, 5]), 0, 2).tolist() \
      == [5, 0]
