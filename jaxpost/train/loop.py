"""The supervised training loop: batches -> jitted step -> metrics, evaluation, checkpoints, on a
`training_session` (mesh, state fresh or resumed, NaN stop; see `session.py`), so running the same command again
continues as if the run had never stopped."""

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from jaxpost.train.checkpoint import CheckpointConfig
from jaxpost.train.mesh import MeshConfig
from jaxpost.train.partition import DEFAULT_RULES, Rules, shard_batch
from jaxpost.train.session import DataIterator, training_session
from jaxpost.train.state import OptimizerConfig, TrainState
from jaxpost.train.step import LossFn


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


def train(*, model_fn: Callable[[], nnx.Module], loss_fn: LossFn, data: DataIterator, workdir: str,
          cfg: TrainConfig, evaluate: Callable[[nnx.Module], dict[str, float]] | None = None,
          rules: Rules = DEFAULT_RULES) -> tuple[nnx.GraphDef, TrainState]:
  """Trains `model_fn()` (called only for a fresh run; e.g. a random init or `models.Pretrained`) on `data`.

  `evaluate(model)` metrics are recorded under `eval/` every `cfg.eval_every` steps and at the last step.
  Returns (graphdef, final state); `nnx.merge(graphdef, state.params)` is the trained model.
  """
  with training_session(model_fn=model_fn, loss_fn=loss_fn, data=data, workdir=workdir, mesh=cfg.mesh,
                        optimizer=cfg.optimizer, checkpoint=cfg.checkpoint, seed=cfg.seed,
                        num_microbatches=cfg.num_microbatches, total_steps=cfg.total_steps, progress=cfg.progress,
                        rules=rules) as session:
    clock = [time.perf_counter()]

    def fetch(metrics, tokens: int) -> dict[str, float]:
      """The step's metrics on the host (waiting for the step), with tokens/s since the previous fetch."""
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.perf_counter()
      values["tokens_per_s"] = tokens / max(now - clock[0], 1e-9)
      clock[0] = now
      return values

    pending = None  # the previous step's metrics, fetched after the next step is dispatched (keeps the device busy)
    for step in range(session.start, cfg.total_steps):
      batch = next(data)
      position = data.get_state()
      session.state, metrics = session.step_fn(session.state, shard_batch(batch, session.mesh))
      if pending is not None:
        session.record(pending[0], fetch(*pending[1:]))
      pending = (step + 1, metrics, _tokens_in(batch))
      done = step + 1
      eval_due = evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or
                                           done == cfg.total_steps)
      save_due = session.save_due(done, cfg.total_steps)
      if eval_due or save_due:  # wait for this step: never evaluate or checkpoint after a non-finite loss
        values = fetch(*pending[1:])
        pending = None
        if eval_due and np.isfinite(values["loss"]):
          model = nnx.merge(session.graphdef, session.state.params)
          values.update({f"eval/{k}": v for k, v in evaluate(model).items()})
          clock[0] = time.perf_counter()
        session.record(done, values)
        if save_due:
          session.save(done, position)
  return session.graphdef, session.state
