"""What every training loop sets up and tears down, in one place so that the SFT and RL loops cannot drift apart.

`training_session(...)` connects the processes, builds the mesh, opens the checkpoint directory, restores the
newest usable checkpoint (or creates the state in its shardings), jits the step and opens the metrics writer; on
exit it waits for background checkpoint writes and closes everything. A loop drives `Session.state` through
`step_fn` and calls `record` (metrics, then the NaN stop) and `save`. Resuming is automatic: params, optimizer
state, step, RNG and the data iterator's position come from the newest readable checkpoint. A NaN/Inf loss or
gradient norm stops the run with `NonFiniteLossError`; no checkpoint is written after it, so the last good one
stays the newest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
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
from jaxpost.train.partition import Rules
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


@dataclasses.dataclass
class Session:
  """The live pieces of one run; `start` counts the loop steps already done (resumed runs start past 0)."""

  mesh: Mesh
  checkpointer: Checkpointer
  graphdef: nnx.GraphDef
  state: TrainState
  step_fn: Callable
  writer: MetricsWriter
  start: int

  def record(self, step: int, values: dict[str, float]) -> None:
    """Writes the metrics of `step`, then stops the run (NonFiniteLossError) if the loss or grad norm is not finite."""
    self.writer.write(step, values)
    check_finite(values, step, self.checkpointer)

  def save_due(self, step: int, total_steps: int) -> bool:
    return self.checkpointer.due(step) or step == total_steps

  def save(self, step: int, data_position: dict) -> None:
    self.checkpointer.save(step, self.state, {"data": data_position})


@contextlib.contextmanager
def training_session(*, model_fn: Callable[[], nnx.Module], loss_fn: LossFn, data: DataIterator, workdir: str,
                     mesh: MeshConfig, optimizer: OptimizerConfig, checkpoint: CheckpointConfig, seed: int,
                     num_microbatches: int, total_steps: int, progress: bool, rules: Rules,
                     updates_per_step: int = 1) -> Iterator[Session]:
  """A `Session` for `total_steps` loop steps of `updates_per_step` optimizer updates each (see the module
  docstring)."""
  initialize_distributed()
  device_mesh = make_mesh(mesh)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), checkpoint)
  writer = None
  try:
    graphdef, state = initial_state(model_fn, optimizer=optimizer, seed=seed, mesh=device_mesh, rules=rules,
                                    checkpointer=checkpointer, data=data)
    step_fn = make_train_step(graphdef=graphdef, loss_fn=loss_fn, optimizer=optimizer, mesh=device_mesh,
                              state_shardings=jax.tree.map(lambda x: x.sharding, state),
                              num_microbatches=num_microbatches)
    start = int(state.step) // updates_per_step
    writer = MetricsWriter(workdir, start_step=start, total_steps=total_steps, progress=progress)
    yield Session(mesh=device_mesh, checkpointer=checkpointer, graphdef=graphdef, state=state, step_fn=step_fn,
                  writer=writer, start=start)
  finally:
    checkpointer.wait()
    checkpointer.close()
    if writer is not None:
      writer.close()
