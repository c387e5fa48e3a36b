"""Train state (params, optimizer state, step, RNG) and the optimizer built from a frozen config.

Parameters are created or placed directly with their target shardings: shapes come from `jax.eval_shape`, and
`jax.jit(init, out_shardings=...)` materialises each shard where it belongs.
"""

import dataclasses
import functools
import re
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxpost.models import Pretrained
from jaxpost.train.partition import DEFAULT_RULES, Rules, param_shardings, path_str, spec_for

SCHEDULES = ("cosine", "constant")
# Parameters that are never weight-decayed, besides all vectors: norms and biases.
_NO_DECAY = re.compile(r"(norm|bias)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
  """AdamW with linear warmup then cosine decay (to `end_lr_ratio` x peak at `total_steps`) or a constant rate.

  `trainable`: a regex on parameter paths; only matching parameters are updated (the others get no update and no
  optimizer state). None trains everything. `clip_norm`: global gradient-norm clipping (None: off).
  """

  learning_rate: float = 1e-4
  schedule: str = "cosine"
  warmup_steps: int = 0
  total_steps: int = 1000
  end_lr_ratio: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0
  trainable: str | None = None

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    if self.learning_rate < 0 or self.weight_decay < 0:
      raise ValueError(f"OptimizerConfig: learning_rate and weight_decay must be >= 0, got {self}")
    if not 0 <= self.warmup_steps <= self.total_steps:
      raise ValueError(f"OptimizerConfig: need 0 <= warmup_steps <= total_steps, got {self.warmup_steps}, "
                       f"{self.total_steps}")
    if self.clip_norm is not None and self.clip_norm <= 0:
      raise ValueError(f"OptimizerConfig.clip_norm must be > 0 or None, got {self.clip_norm}")
    if self.trainable is not None:
      re.compile(self.trainable)


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position. `rng` is raw key data (uint32), easy to save."""

  params: nnx.State
  opt_state: optax.OptState
  step: jax.Array
  rng: jax.Array


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Learning rate as a function of the step: linear warmup from 0, then cosine decay or constant."""
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.total_steps, 1), end_value=cfg.learning_rate * cfg.end_lr_ratio)
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  return optax.join_schedules([warmup, optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])


def _path_mask(params, keep: Callable[[str, jax.Array], bool]):
  return jax.tree_util.tree_map_with_path(lambda p, x: keep(path_str(p), x), params)


def decay_mask(params):
  """True for parameters that get weight decay: matrices, except norms and biases."""
  return _path_mask(params, lambda path, x: x.ndim >= 2 and not _NO_DECAY.search(path))


def trainable_mask(cfg: OptimizerConfig, params):
  """True for parameters the optimizer updates (all of them when `cfg.trainable` is None)."""
  pattern = None if cfg.trainable is None else re.compile(cfg.trainable)
  return _path_mask(params, lambda path, x: pattern is None or bool(pattern.search(path)))


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """Clipped AdamW on the trainable parameters; frozen ones get zero updates and no state."""
  steps = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm is not None else []
  steps.append(optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  adamw = optax.chain(*steps)
  if cfg.trainable is None:
    return adamw
  labels = lambda params: jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask(cfg, params))
  return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)


def _init_train_state(params, *, optimizer: OptimizerConfig, seed: int) -> TrainState:
  return TrainState(params=params, opt_state=make_optimizer(optimizer).init(params),
                    step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)))


def train_state_shardings(params_shapes, *, optimizer: OptimizerConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """(shapes, shardings) of the TrainState for params of these shapes, without allocating anything."""
  shapes = jax.eval_shape(functools.partial(_init_train_state, optimizer=optimizer, seed=0), params_shapes)
  return shapes, param_shardings(shapes, mesh, rules)


def create_train_state(params, *, optimizer: OptimizerConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES,
                       seed: int = 0) -> TrainState:
  """A fresh TrainState (step 0) whose every leaf is sharded by `rules`."""
  _, shardings = train_state_shardings(params, optimizer=optimizer, mesh=mesh, rules=rules)
  init = functools.partial(_init_train_state, optimizer=optimizer, seed=seed)
  return jax.jit(init, out_shardings=shardings)(params)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) of a model whose state is all nnx.Param, which is what the trainer supports."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"the trainer needs a model whose state is all nnx.Param; found also {list(rest.keys())}")
  return graphdef, params


def abstract_model(model_fn: Callable[[], nnx.Module]) -> nnx.Module:
  """`model_fn()` with ShapeDtypeStruct leaves; a `Pretrained` source reads only its config.json."""
  return model_fn.abstract() if isinstance(model_fn, Pretrained) else nnx.eval_shape(model_fn)


def init_params(model_fn: Callable[[], nnx.Module], *, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """(graphdef, params) of `model_fn()` with every param created directly in its `rules` sharding, never whole on
  one device: a `Pretrained` checkpoint reads each shard into place, any other `model_fn` (a random init) runs
  under `jax.jit` with those output shardings."""
  if isinstance(model_fn, Pretrained):
    placement = lambda path, target: NamedSharding(mesh, spec_for("/".join(map(str, path)), target.shape, mesh,
                                                                  rules))
    return split_model(model_fn.load(placement))
  graphdef, params_shapes = split_model(nnx.eval_shape(model_fn))
  shardings = param_shardings(params_shapes, mesh, rules)
  params = jax.jit(lambda: split_model(model_fn())[1], out_shardings=shardings)()
  return graphdef, params
