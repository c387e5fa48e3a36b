"""One RL step's experience: rollouts (optionally from demonstration prefixes) -> rewards -> advantages -> batch.

Every algorithm shares the rollout code and differs only in a `Method`, defined with the algorithm in
`jaxpost.rl`: how many tokens of the demonstration each rollout starts from, and how rewards become advantages.

Letters: B prompts, G rollouts per prompt, N = B*G rows, P prompt length, C completion length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxpost import hosts
from jaxpost.data import PromptBatch
from jaxpost.generate import SamplingConfig, generate, left_pad
from jaxpost.losses import build_hybrid_completions
from jaxpost.rewards import RewardFn
from jaxpost.rewards.guard import RewardGuard
from jaxpost.train.partition import batch_sharding


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig:
  """G rollouts per prompt of at most `completion_len` tokens (demonstration prefix included)."""

  group_size: int = 8
  completion_len: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  pad_multiple: int = 32  # prompts are left-padded to a multiple of this, so shapes (and compilations) stay few

  def __post_init__(self):
    if self.group_size < 1 or self.pad_multiple < 1:
      raise ValueError(f"RolloutConfig: group_size and pad_multiple must be >= 1, got {self.group_size}, "
                       f"{self.pad_multiple}")

  def padded_length(self, longest: int) -> int:
    return _round_up(longest, self.pad_multiple)

  def sampling(self) -> SamplingConfig:
    return SamplingConfig(completion_len=self.completion_len, temperature=self.temperature, top_k=self.top_k,
                          top_p=self.top_p, stop_ids=self.stop_ids, pad_id=self.pad_id)


class Method(Protocol):
  """Where rollouts start and how their rewards become advantages."""

  needs_demonstrations: bool

  def prefix_lengths(self, rng: jax.Array, demo_lens_N: np.ndarray, step: int, group_size: int) -> np.ndarray: ...

  def advantages(self, rewards_N: np.ndarray, prefix_mask_NxC: np.ndarray, group_size: int) -> np.ndarray: ...


def sample_rollouts(model, prompts: PromptBatch, rng: jax.Array, prefix_lens_N: np.ndarray, *,
                    cfg: RolloutConfig, mesh: Mesh | None = None) -> dict[str, np.ndarray]:
  """G rollouts per prompt; row n continues prompt ++ demo[:prefix_lens_N[n]] for at most C - prefix tokens
  (none when the prefix already ends with a stop id, i.e. is a whole demonstration).

  Returns the RL layout with the original prompt, completion = prefix ++ continuation, and `prefix_mask`. On
  several processes `prompts` are this process's share: the rows are generated as one global batch on `mesh` and
  each process gets back its own rows (padded widths agree across processes).
  """
  g, c = cfg.group_size, cfg.completion_len
  rows = [i for i in range(len(prompts.prompt_ids)) for _ in range(g)]
  demos = [list(prompts.demo_ids[i])[:c] for i in rows] if prompts.demo_ids is not None else [[] for _ in rows]
  prefix_lens_N = np.minimum(prefix_lens_N, [len(d) for d in demos]).astype(np.int32)
  starts = [list(prompts.prompt_ids[i]) + demos[n][:prefix_lens_N[n]] for n, i in enumerate(rows)]
  start_width = cfg.padded_length(hosts.global_max(max(map(len, starts))))
  start_tokens, start_mask = left_pad(starts, length=start_width, pad_id=cfg.pad_id)
  finished = np.asarray([n > 0 and d[n - 1] in cfg.stop_ids for d, n in zip(demos, prefix_lens_N)])
  room = np.where(finished, 0, c - prefix_lens_N).astype(np.int32)  # a whole demonstration is not continued
  if jax.process_count() > 1:  # this process's rows of one global batch
    start_tokens, start_mask, room = (jax.make_array_from_process_local_data(batch_sharding(mesh), x)
                                      for x in (start_tokens, start_mask, room))
  rollout = generate(model, start_tokens, start_mask, cfg=cfg.sampling(), rng=rng, max_new_tokens=room, mesh=mesh)
  demo_tokens, _ = _right_pad(demos, width=max(1, int(prefix_lens_N.max())), pad_id=cfg.pad_id)
  hybrid = build_hybrid_completions(jnp.asarray(demo_tokens), jnp.asarray(prefix_lens_N),
                                    hosts.local_rows(rollout.completion_tokens),
                                    hosts.local_rows(rollout.completion_mask), width=c, pad_id=cfg.pad_id)
  originals = [prompts.prompt_ids[i] for i in rows]
  prompt_width = cfg.padded_length(hosts.global_max(max(map(len, originals))))
  prompt_tokens, prompt_mask = left_pad(originals, length=prompt_width, pad_id=cfg.pad_id)
  return {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
          **{k: np.asarray(v) for k, v in hybrid.items()}}


def make_experience(model, prompts: PromptBatch, rng: jax.Array, step: int, *, method: Method, cfg: RolloutConfig,
                    reward_fn: RewardFn, decode: Callable[[list[int]], str], mesh: Mesh | None = None,
                    guard: RewardGuard = RewardGuard()) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """The RL batch of one step (RL layout + `advantages` + `rewards`) and rollout statistics (over all
  processes). Each process scores its own rows under `guard` (timeout; failed items get 0 and are counted in
  `reward/failed`); its rows hold whole groups, so advantages need no other host."""
  if method.needs_demonstrations and prompts.demo_ids is None:
    raise ValueError(f"{type(method).__name__} needs demonstrations: the prompt batch has no demo_ids")
  g = cfg.group_size
  prefix_rng, sample_rng = jax.random.split(rng)
  demo_lens = [len(prompts.demo_ids[i]) if prompts.demo_ids is not None else 0
               for i in range(len(prompts.prompt_ids)) for _ in range(g)]
  if jax.process_count() > 1:  # processes draw for different rows (one process keeps its draws unchanged)
    prefix_rng = jax.random.fold_in(prefix_rng, jax.process_index())
  prefix_lens = method.prefix_lengths(prefix_rng, np.asarray(demo_lens, np.int32), step, g)
  batch = sample_rollouts(model, prompts, sample_rng, prefix_lens, cfg=cfg, mesh=mesh)
  lengths = batch["completion_mask"].sum(axis=1)
  texts = [decode(row[:n].tolist()) for row, n in zip(batch["completion_tokens"], lengths)]
  repeat = lambda items: [x for x in items for _ in range(g)]
  rewards, failed = guard(reward_fn, repeat(prompts.prompts), texts, repeat(prompts.answers))
  batch["advantages"] = method.advantages(rewards, batch["prefix_mask"], g).astype(np.float32)
  batch["rewards"] = rewards
  return batch, rollout_stats(rewards, lengths, batch["prefix_mask"].sum(axis=1), failed)


def rollout_stats(rewards_N: np.ndarray, lengths_N: np.ndarray, prefix_lens_N: np.ndarray,
                  failed: int) -> dict[str, float]:
  """Reward, length and prefix statistics of one generation batch, over the rows of every process."""
  on_policy = prefix_lens_N == 0
  sums = hosts.global_sum(np.asarray([
      len(rewards_N), rewards_N.sum(), np.square(rewards_N).sum(), on_policy.sum(), rewards_N[on_policy].sum(),
      lengths_N.sum(), (~on_policy).sum(), prefix_lens_N[~on_policy].sum(), failed], np.float64))
  rows, reward, reward_sq, n_on, reward_on, length, n_prefixed, prefix, failed_all = sums
  mean = reward / rows
  return {"reward/mean": float(mean), "reward/std": float(np.sqrt(max(reward_sq / rows - mean ** 2, 0.0))),
          "reward/failed": float(failed_all),
          "reward/on_policy_mean": float(reward_on / n_on) if n_on else float("nan"),
          "response_length/mean": float(length / rows),
          "response_length/max": float(hosts.global_max(int(lengths_N.max()))),
          "prefix/mean_length": float(prefix / n_prefixed) if n_prefixed else 0.0}


def informative_groups(batch: dict[str, np.ndarray], group_size: int, *, row_multiple: int
                       ) -> tuple[dict[str, np.ndarray], float]:
  """The rows of the groups whose advantages are not all zero, padded with empty rows (mask 0, advantage 0) to a
  multiple of `row_multiple`, so update shapes (and compilations) stay few; and the fraction of groups kept.

  A group whose members all got the same reward has zero advantages everywhere: with no KL or entropy term it adds
  nothing to the policy gradient, only compute. Dropping it is DAPO's dynamic-sampling filter without the resampling;
  the loss then averages over the informative rows only.
  """
  rows = len(batch["advantages"])
  advantages_GxR = np.abs(batch["advantages"].reshape(rows // group_size, -1))
  keep_G = advantages_GxR.max(axis=1) > 0
  keep_N = np.repeat(keep_G, group_size)
  kept = int(keep_N.sum())
  padded = max(row_multiple, _round_up(hosts.global_max(kept), row_multiple))  # equal on every process
  index_N = np.concatenate([np.flatnonzero(keep_N), np.zeros(padded - kept, np.int64)])
  out = {k: np.asarray(v)[index_N] for k, v in batch.items()}
  for key in ("completion_mask", "prefix_mask", "advantages"):
    if key in out:
      out[key][kept:] = 0
  kept_groups, groups = hosts.global_sum(np.asarray([keep_G.sum(), len(keep_G)]))
  return out, float(kept_groups / groups)


def trim_completions(batch: dict[str, np.ndarray], *, multiple: int) -> dict[str, np.ndarray]:
  """The batch with completion columns past the longest completion dropped (width rounded up to `multiple`, so
  update shapes and compilations stay few): those columns are padding in every row and cost update compute only.

  Every array as wide as `completion_mask` ([N, C] per-token arrays) is cut. A loss normalised by the width
  (dr_grpo without `max_completion_length`) would change: set `max_completion_length` for such losses.
  """
  mask_NxC = batch["completion_mask"]
  width = mask_NxC.shape[1]
  longest = hosts.global_max(int(np.max(np.flatnonzero(mask_NxC.any(axis=0)), initial=-1)) + 1)
  keep = min(width, max(multiple, _round_up(longest, multiple)))
  return {k: v[:, :keep] if v.ndim == 2 and v.shape == mask_NxC.shape else v for k, v in batch.items()}


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _right_pad(sequences: Sequence[Sequence[int]], *, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(sequences), width), pad_id, np.int32)
  mask = np.zeros((len(sequences), width), np.int32)
  for row, seq in enumerate(sequences):
    seq = list(seq)[:width]
    tokens[row, :len(seq)] = seq
    mask[row, :len(seq)] = 1
  return tokens, mask
