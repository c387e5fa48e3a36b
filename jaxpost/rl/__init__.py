"""RL algorithms, one module each, looked up by name: `jaxpost.rl.build("prefix_rft", policy, options)`."""

from jaxpost.rl import grpo, luffy, prefix_rft  # noqa: F401  (importing each module registers it)
from jaxpost.rl.algorithm import Algorithm, build, names, register
from jaxpost.rl.grpo import GRPOMethod
from jaxpost.rl.luffy import LUFFYMethod
from jaxpost.rl.prefix_rft import PrefixRFTMethod

__all__ = ["Algorithm", "GRPOMethod", "LUFFYMethod", "PrefixRFTMethod", "build", "names", "register"]
