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

from jaxpost.train.checkpoint import CheckpointConfig, Checkpointer, abstract_state, export_hf
from jaxpost.train.mesh import MeshConfig, initialize_distributed, make_mesh
from jaxpost.train.metrics import MetricsWriter
from jaxpost.train.partition import DEFAULT_RULES, Rules, param_shardings, shard_batch
from jaxpost.train.state import OptimizerConfig, TrainState, create_train_state, split_model, train_state_shardings
from jaxpost.train.step import LossFn, make_train_step


class DataIterator(Protocol):
  """Batches of host arrays (leading dim = this process's rows), resumable from a JSON-able position."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> dict:
    """Position after the batches returned so far."""

  def set_state(self, state: dict) -> None:
    """Continue from a position returned by `get_state`."""


class NonFiniteLossError(RuntimeError):
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
  export_hf: bool = False  # write the final model to workdir/hf as a Hugging Face checkpoint
  progress: bool = True

  def __post_init__(self):
    if self.total_steps < 1 or self.num_microbatches < 1:
      raise ValueError(f"TrainConfig: total_steps and num_microbatches must be >= 1, got {self.total_steps}, "
                       f"{self.num_microbatches}")


def _tokens_in(batch: dict) -> int:
  """Token positions processed: the sizes of every `*tokens` array (tokens, prompt_tokens, completion_tokens)."""
  return sum(np.size(v) for k, v in batch.items() if k.endswith("tokens")) * jax.process_count()


def _initial_state(model_fn, cfg: TrainConfig, mesh, rules: Rules, checkpointer: Checkpointer, data: DataIterator):
  """(graphdef, state): restored from the newest checkpoint (and `data` moved to its position), else fresh."""
  graphdef, params_shapes = split_model(nnx.eval_shape(model_fn))
  shapes, shardings = train_state_shardings(params_shapes, optimizer=cfg.optimizer, mesh=mesh, rules=rules)
  restored = checkpointer.restore_latest(abstract_state(shapes, shardings))
  if restored is not None:
    state, position = restored
    data.set_state(position["data"])
    return graphdef, state
  _, params = split_model(model_fn())
  params = jax.device_put(params, param_shardings(params, mesh, rules))
  return graphdef, create_train_state(params, optimizer=cfg.optimizer, mesh=mesh, rules=rules, seed=cfg.seed)


def train(*, model_fn: Callable[[], nnx.Module], loss_fn: LossFn, data: DataIterator, workdir: str,
          cfg: TrainConfig, rules: Rules = DEFAULT_RULES) -> tuple[nnx.GraphDef, TrainState]:
  """Trains `model_fn()` (called only for a fresh run; e.g. a random init or `from_pretrained`) on `data`.

  Returns (graphdef, final state); `nnx.merge(graphdef, state.params)` is the trained model.
  """
  initialize_distributed()
  mesh = make_mesh(cfg.mesh)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
  graphdef, state = _initial_state(model_fn, cfg, mesh, rules, checkpointer, data)
  step_fn = make_train_step(graphdef=graphdef, loss_fn=loss_fn, optimizer=cfg.optimizer, mesh=mesh,
                            state_shardings=jax.tree.map(lambda x: x.sharding, state),
                            num_microbatches=cfg.num_microbatches)
  start = int(state.step)
  if start and jax.process_index() == 0:
    print(f"resuming from step {start} of {checkpointer.directory}", file=sys.stderr)
  writer = MetricsWriter(workdir, start_step=start, total_steps=cfg.total_steps, progress=cfg.progress)
  clock = [time.perf_counter()]

  def log(step: int, metrics, tokens: int) -> None:
    """Fetches the step's metrics (waiting for it), records them, and stops on a non-finite loss."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    values["tokens_per_s"] = tokens / max(now - clock[0], 1e-9)
    clock[0] = now
    writer.write(step, values)
    if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
      checkpointer.wait()
      last = checkpointer.steps()
      raise NonFiniteLossError(
          f"non-finite loss {values['loss']} / grad norm {values['grad_norm']} at step {step}; stopped. Last good "
          f"checkpoint: {f'step {last[-1]}' if last else 'none'} in {checkpointer.directory}")

  try:
    pending = None  # the previous step's metrics, fetched after the next step is dispatched (keeps the device busy)
    for step in range(start, cfg.total_steps):
      batch = next(data)
      position = data.get_state()
      state, metrics = step_fn(state, shard_batch(batch, mesh))
      if pending is not None:
        log(*pending)
      pending = (step + 1, metrics, _tokens_in(batch))
      if checkpointer.due(step + 1) or step + 1 == cfg.total_steps:
        log(*pending)  # never checkpoint a state that follows a non-finite loss
        pending = None
        checkpointer.save(step + 1, state, {"data": position})
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  if cfg.export_hf:
    export_hf(graphdef, state.params, os.path.join(workdir, "hf"))
  return graphdef, state
