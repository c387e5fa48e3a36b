"""An RL algorithm in one object: where its rollouts start, how rewards become advantages, and its loss.

Each algorithm is one module of `jaxpost.rl` that registers a builder under its name; experiments look it up
(`--config.method=prefix_rft`) and get everything the RL loop needs. A new algorithm is one new module plus its
tests; the pure loss kernels stay in `jaxpost.losses`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jaxpost.losses import GRPOConfig
from jaxpost.train.experience import Method
from jaxpost.train.step import LossFn


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """`method`: rollout starts and advantages (what `rl_train` takes as `method=`); `loss_fn`: its loss."""

  name: str
  method: Method
  loss_fn: LossFn


# builder(policy, options) -> Algorithm; `policy` holds the GRPO-family settings every algorithm shares, `options`
# the algorithm's own (e.g. Prefix-RFT's schedule), by the names of its config dataclass.
Builder = Callable[[GRPOConfig, Mapping[str, Any]], Algorithm]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
  """Decorator: makes `builder` the algorithm called `name`."""

  def add(builder: Builder) -> Builder:
    if name in _BUILDERS:
      raise ValueError(f"RL algorithm {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder

  return add


def names() -> tuple[str, ...]:
  """The registered algorithms."""
  return tuple(_BUILDERS)


def build(name: str, policy: GRPOConfig, options: Mapping[str, Any] | None = None) -> Algorithm:
  """The algorithm `name` with the shared `policy` settings and its own `options`."""
  if name not in _BUILDERS:
    raise ValueError(f"unknown RL algorithm {name!r}; registered: {', '.join(_BUILDERS)}")
  return _BUILDERS[name](policy, dict(options or {}))
