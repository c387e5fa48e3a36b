"""The RL loop: prompts -> rollouts -> rewards -> advantages -> `num_iterations` x mini-batch updates.

It runs on the same `training_session` as the supervised loop (state, jitted step, checkpoints with exact resume,
data position included, metrics, NaN stop); what differs per algorithm lives in `jaxpost.rl` (rollout starts,
advantages, loss) and the shared rollout code in `experience.py`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from jaxpost import hosts
from jaxpost.data import PromptBatch
from jaxpost.losses import completion_logps
from jaxpost.rewards import RewardFn
from jaxpost.rewards.guard import RewardGuard
from jaxpost.train.checkpoint import CheckpointConfig
from jaxpost.train.experience import Method, RolloutConfig, informative_groups, make_experience, trim_completions
from jaxpost.train.mesh import MeshConfig
from jaxpost.train.partition import DEFAULT_RULES, Rules, shard_batch, traced_on
from jaxpost.train.session import training_session
from jaxpost.train.state import OptimizerConfig, init_params
from jaxpost.train.step import LossFn

# Host-side bookkeeping arrays of the experience that the loss does not read.
_NOT_FOR_LOSS = ("rewards",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
  """`total_steps` RL steps, each: one batch of prompts, G rollouts each, then `num_iterations` passes of
  `num_minibatches` updates, each accumulated over `num_microbatches` (exact: losses fix their counts per
  mini-batch). `reference` keeps a frozen copy of the initial model for KL (`ref_logps`), placed by the partition
  rules like the policy. Rewards run under `reward_guard` (timeout, counted failures)."""

  total_steps: int
  num_iterations: int = 1
  num_minibatches: int = 1
  num_microbatches: int = 1
  reference: bool = False
  informative_only: bool = False  # update only on groups with a nonzero advantage (needs no KL/entropy term)
  row_multiple: int = 64  # with informative_only: rows are padded to a multiple of this (few update shapes)
  trim_multiple: int = 16  # updates drop completion columns past the longest completion, kept to a multiple of
  # this (0: keep the full completion_len); a loss normalised by width needs max_completion_length set
  eval_every: int = 0  # 0: evaluate only at the end (when an evaluate function is given)
  seed: int = 0
  mesh: MeshConfig = MeshConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  progress: bool = True
  reward_guard: RewardGuard = RewardGuard()

  def __post_init__(self):
    if min(self.total_steps, self.num_iterations, self.num_minibatches, self.num_microbatches) < 1 or \
        self.eval_every < 0:
      raise ValueError(f"RLConfig: total_steps, num_iterations, num_minibatches, num_microbatches must be >= 1 and "
                       f"eval_every >= 0, got {self.total_steps}, {self.num_iterations}, {self.num_minibatches}, "
                       f"{self.num_microbatches}, {self.eval_every}")
    if self.trim_multiple < 0:
      raise ValueError(f"RLConfig.trim_multiple must be >= 0 (0: off), got {self.trim_multiple}")
    if self.informative_only and self.row_multiple % self.num_minibatches:
      raise ValueError(f"RLConfig: row_multiple {self.row_multiple} must be a multiple of num_minibatches "
                       f"{self.num_minibatches}")

  @property
  def updates_per_step(self) -> int:
    return self.num_iterations * self.num_minibatches


def rl_train(*, model_fn: Callable[[], nnx.Module], loss_fn: LossFn, method: Method, rollout: RolloutConfig,
             prompts, reward_fn: RewardFn, decode: Callable[[list[int]], str], workdir: str, cfg: RLConfig,
             evaluate: Callable[[nnx.Module], dict[str, float]] | None = None, rules: Rules = DEFAULT_RULES):
  """Trains `model_fn()` with RL on `prompts` (an iterator of `PromptBatch` with get_state/set_state).

  Returns (graphdef, final state). `evaluate(model)` metrics are logged under `eval/` every `eval_every` steps
  and at the last step.
  """
  with training_session(model_fn=model_fn, loss_fn=loss_fn, data=prompts, workdir=workdir, mesh=cfg.mesh,
                        optimizer=cfg.optimizer, checkpoint=cfg.checkpoint, seed=cfg.seed,
                        num_microbatches=cfg.num_microbatches, total_steps=cfg.total_steps, progress=cfg.progress,
                        rules=rules, updates_per_step=cfg.updates_per_step) as session:
    mesh, graphdef = session.mesh, session.graphdef
    # Old-policy and reference log-probs at the rollout temperature, as the loss computes its own (TRL's convention).
    logps_fn = jax.jit(traced_on(mesh, lambda params, batch: completion_logps(
        nnx.merge(graphdef, params), batch, temperature=rollout.temperature or 1.0)[0]))
    reference = init_params(model_fn, mesh=mesh, rules=rules)[1] if cfg.reference else None  # sharded as the policy
    base_key = jax.random.key(cfg.seed)
    for step in range(session.start, cfg.total_steps):
      prompt_batch: PromptBatch = next(prompts)
      position = prompts.get_state()
      step_key = jax.random.fold_in(base_key, step)
      clock = time.perf_counter()
      model = nnx.merge(graphdef, session.state.params)
      batch, stats = make_experience(model, prompt_batch, step_key, step, method=method, cfg=rollout,
                                     reward_fn=reward_fn, decode=decode, mesh=mesh, guard=cfg.reward_guard)
      rollout_s = time.perf_counter() - clock
      loss_batch = with_generation_token_count({k: v for k, v in batch.items() if k not in _NOT_FOR_LOSS})
      if cfg.trim_multiple:
        loss_batch = trim_completions(loss_batch, multiple=cfg.trim_multiple)
      if cfg.informative_only:
        loss_batch, stats["groups/informative_fraction"] = informative_groups(
            loss_batch, rollout.group_size, row_multiple=cfg.row_multiple)
      if cfg.updates_per_step > 1 or reference is not None:
        rollouts_on_mesh = shard_batch(loss_batch, mesh)
        if cfg.updates_per_step > 1:  # later updates are off-policy: ratios need the rollout policy's log-probs
          loss_batch["old_logps"] = hosts.local_rows(logps_fn(session.state.params, rollouts_on_mesh))
        if reference is not None:
          loss_batch["ref_logps"] = hosts.local_rows(logps_fn(reference, rollouts_on_mesh))
      clock = time.perf_counter()
      session.state, update_metrics = _update(session.state, loss_batch, session.step_fn, cfg, mesh,
                                              np.random.default_rng([cfg.seed, step]))
      update_s = time.perf_counter() - clock
      tokens = loss_batch["completion_mask"].sum() + loss_batch["prompt_mask"].sum()
      metrics = {**stats, **update_metrics, "rollout_tokens_per_s": batch["completion_mask"].sum() / rollout_s,
                 "update_tokens_per_s": tokens * cfg.num_iterations / update_s}
      if evaluate is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0)
                                   or step + 1 == cfg.total_steps):
        metrics.update({f"eval/{k}": v for k, v in evaluate(nnx.merge(graphdef, session.state.params)).items()})
      session.record(step + 1, metrics)
      if session.save_due(step + 1, cfg.total_steps):
        session.save(step + 1, position)
  return session.graphdef, session.state


def with_generation_token_count(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`batch` with `num_loss_tokens`, its active completion tokens (over all processes), by which dapo / cispo
  normalise every update of this generation batch (TRL's convention); one copy per row, so it survives row splits."""
  mask_NxC = batch["completion_mask"]
  return {**batch, "num_loss_tokens": np.full(len(mask_NxC), hosts.global_sum(mask_NxC.sum()), np.float32)}


def _update(state, batch: dict[str, np.ndarray], step_fn, cfg: RLConfig, mesh, rng: np.random.Generator):
  """`num_iterations` shuffled passes of `num_minibatches` updates; metrics averaged over the updates."""
  rows = len(batch["advantages"])
  if rows % cfg.num_minibatches:
    raise ValueError(f"RL batch of {rows} rollouts does not split into num_minibatches={cfg.num_minibatches}")
  sums: dict[str, float] = {}
  for _ in range(cfg.num_iterations):
    for chunk in np.split(rng.permutation(rows), cfg.num_minibatches):
      minibatch = {k: np.asarray(v)[chunk] for k, v in batch.items()}
      state, metrics = step_fn(state, shard_batch(minibatch, mesh))
      for k, v in jax.device_get(metrics).items():
        sums[k] = sums.get(k, 0.0) + float(v)
  return state, {k: v / cfg.updates_per_step for k, v in sums.items()}
