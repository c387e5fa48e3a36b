"""The generic training loop: mesh -> state (fresh or resumed) -> batches -> jitted step -> metrics, checkpoints.

Resuming is automatic: when `workdir/checkpoints` holds a checkpoint, params, optimizer state, step, RNG and the
data iterator's position are restored from the newest readable one, so running the same command again continues
as if the run had never stopped. A NaN/Inf loss or gradient norm stops the run with `NonFiniteLossError`; no
checkpoint is written after it, so the last good one stays the newest.
"""

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxpost.errors import JaxpostError
from jaxpost.train.checkpoint import CheckpointConfig, Checkpointer, abstract_state
from jaxpost.train.distributed import initialize_distributed
from jaxpost.train.mesh import MeshConfig, make_mesh
from jaxpost.train.metrics import MetricsWriter
from jaxpost.train.partition import DEFAULT_RULES, Rules, shard_batch
from jaxpost.train.state import (OptimizerConfig, TrainState, abstract_model, create_train_state, init_params,
                                 split_model, train_state_shardings)
from jaxpost.train.step import LossFn, make_train_step


class DataIterator(Protocol):
  """Batches of host arrays (leading dim = this process's rows), resumable from a JSON-able position."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> dict:
    """Position after the batches returned so far."""

  def set_state(self, state: dict) -> None:
    """Continue from a position returned by `get_state`."""


class NonFiniteLossError(JaxpostError):
  """The loss or gradient norm became NaN or Inf."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """`total_steps` optimizer steps, each on one batch split into `num_microbatches` accumulated micro-batches."""

  total_steps: int
  num_microbatches: int = 1
  seed: int = 0
  mesh: MeshConfig = MeshConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  eval_every: int | None = None  # with `train(evaluate=...)`: every this many steps, and at the last step
  progress: bool = True

  def __post_init__(self):
    if self.total_steps < 1 or self.num_microbatches < 1:
      raise ValueError(f"TrainConfig: total_steps and num_microbatches must be >= 1, got {self.total_steps}, "
                       f"{self.num_microbatches}")
    if self.eval_every is not None and self.eval_every < 0:
      raise ValueError(f"TrainConfig.eval_every must be >= 0 or None, got {self.eval_every}")


def _tokens_in(batch: dict) -> int:
  """Token positions processed: the sizes of every `*tokens` array (tokens, prompt_tokens, completion_tokens)."""
  return sum(np.size(v) for k, v in batch.items() if k.endswith("tokens")) * jax.process_count()


def initial_state(model_fn: Callable[[], nnx.Module], *, optimizer: OptimizerConfig, seed: int, mesh: Mesh,
                  rules: Rules, checkpointer: Checkpointer, data: DataIterator) -> tuple[nnx.GraphDef, TrainState]:
  """(graphdef, state): restored from the newest readable checkpoint (and `data` moved to its position), else
  fresh from `model_fn()` with its params created in their `rules` shardings (`init_params`: pass a
  `models.Pretrained` for a checkpoint, so that it is read shard by shard). Prints a line when resuming."""
  graphdef, params_shapes = split_model(abstract_model(model_fn))
  shapes, shardings = train_state_shardings(params_shapes, optimizer=optimizer, mesh=mesh, rules=rules)
  restored = checkpointer.restore_latest(abstract_state(shapes, shardings))
  if restored is not None:
    state, position = restored
    data.set_state(position["data"])
    if jax.process_index() == 0:
      print(f"resuming from step {int(state.step)} of {checkpointer.directory}", file=sys.stderr)
    return graphdef, state
  _, params = init_params(model_fn, mesh=mesh, rules=rules)
  return graphdef, create_train_state(params, optimizer=optimizer, mesh=mesh, rules=rules, seed=seed)


def check_finite(metrics: dict[str, float], step: int, checkpointer: Checkpointer) -> None:
  """Raises NonFiniteLossError, naming the last good checkpoint, when the loss or grad norm is NaN or Inf."""
  bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics and not np.isfinite(metrics[k])}
  if bad:
    checkpointer.wait()
    last = checkpointer.steps()
    raise NonFiniteLossError(
        f"non-finite {', '.join(f'{k} {v}' for k, v in bad.items())} at step {step}; stopped. Last good "
        f"checkpoint: {f'step {last[-1]}' if last else 'none'} in {checkpointer.directory}")


def train(*, model_fn: Callable[[], nnx.Module], loss_fn: LossFn, data: DataIterator, workdir: str,
          cfg: TrainConfig, evaluate: Callable[[nnx.Module], dict[str, float]] | None = None,
          rules: Rules = DEFAULT_RULES) -> tuple[nnx.GraphDef, TrainState]:
  """Trains `model_fn()` (called only for a fresh run; e.g. a random init or `from_pretrained`) on `data`.

  `evaluate(model)` metrics are recorded under `eval/` every `cfg.eval_every` steps and at the last step.
  Returns (graphdef, final state); `nnx.merge(graphdef, state.params)` is the trained model.
  """
  initialize_distributed()
  mesh = make_mesh(cfg.mesh)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
  graphdef, state = initial_state(model_fn, optimizer=cfg.optimizer, seed=cfg.seed, mesh=mesh, rules=rules,
                                  checkpointer=checkpointer, data=data)
  step_fn = make_train_step(graphdef=graphdef, loss_fn=loss_fn, optimizer=cfg.optimizer, mesh=mesh,
                            state_shardings=jax.tree.map(lambda x: x.sharding, state),
                            num_microbatches=cfg.num_microbatches)
  start = int(state.step)
  writer = MetricsWriter(workdir, start_step=start, total_steps=cfg.total_steps, progress=cfg.progress)
  clock = [time.perf_counter()]

  def fetch(metrics, tokens: int) -> dict[str, float]:
    """The step's metrics on the host (waiting for the step), with tokens/s since the previous fetch."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    values["tokens_per_s"] = tokens / max(now - clock[0], 1e-9)
    clock[0] = now
    return values

  def record(step: int, values: dict[str, float]) -> None:
    writer.write(step, values)
    check_finite(values, step, checkpointer)

  try:
    pending = None  # the previous step's metrics, fetched after the next step is dispatched (keeps the device busy)
    for step in range(start, cfg.total_steps):
      batch = next(data)
      position = data.get_state()
      state, metrics = step_fn(state, shard_batch(batch, mesh))
      if pending is not None:
        record(pending[0], fetch(*pending[1:]))
      pending = (step + 1, metrics, _tokens_in(batch))
      done = step + 1
      eval_due = evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or
                                           done == cfg.total_steps)
      save_due = checkpointer.due(done) or done == cfg.total_steps
      if eval_due or save_due:  # wait for this step: never evaluate or checkpoint after a non-finite loss
        values = fetch(*pending[1:])
        pending = None
        if eval_due and np.isfinite(values["loss"]):
          values.update({f"eval/{k}": v for k, v in evaluate(nnx.merge(graphdef, state.params)).items()})
          clock[0] = time.perf_counter()
        record(done, values)
        if save_due:
          checkpointer.save(done, state, {"data": position})
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  return graphdef, state
