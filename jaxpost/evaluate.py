"""Held-out evaluation: generate for each prompt, score with a reward function, report accuracy.

With `samples > 1` the answers of several sampled completions are put to a majority vote (self-consistency), the
"more parallel samples" side of DMS's inference-time hyper-scaling.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from jaxpost import rewards
from jaxpost.data import encode_prompt
from jaxpost.generate import CacheFactory, SamplingConfig, generate, left_pad
from jaxpost.hosts import to_host
from jaxpost.models import DenseKVCache


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
  """Greedy by default; `samples` > 1 with `temperature` > 0 votes over sampled answers."""

  completion_len: int = 96
  batch_size: int = 64
  samples: int = 1
  temperature: float = 0.0
  seed: int = 0

  def __post_init__(self):
    if self.samples < 1 or self.batch_size < 1:
      raise ValueError(f"EvalConfig: samples and batch_size must be >= 1, got {self.samples}, {self.batch_size}")
    if self.samples > 1 and self.temperature == 0:
      raise ValueError("EvalConfig: majority vote over samples needs temperature > 0 (greedy samples are equal)")


def evaluate(model, tokenizer, records: Sequence[Mapping[str, str]], *, reward_fn, extract_answer: Callable,
             cfg: EvalConfig = EvalConfig(), cache_factory: CacheFactory = DenseKVCache.create,
             mesh=None) -> dict[str, float]:
  """Accuracy (reward of the voted answer), mean completion length, the fraction stopped by EOS and the fraction
  whose KV cache overflowed (warned about: their answers are not trustworthy). On several
  processes each one runs every record (the generated rows are gathered), so all return the same numbers."""
  sampling = SamplingConfig(completion_len=cfg.completion_len, temperature=cfg.temperature, n=cfg.samples,
                            stop_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id or 0)
  scores, lengths, stopped, overflow = [], [], [], []
  key = jax.random.key(cfg.seed)
  for start in range(0, len(records), cfg.batch_size):
    chunk = records[start:start + cfg.batch_size]
    tokens, mask = left_pad([encode_prompt(tokenizer, r["prompt"]) for r in chunk], pad_id=sampling.pad_id)
    rollout = generate(model, tokens, mask, cfg=sampling, rng=jax.random.fold_in(key, start),
                       cache_factory=cache_factory, mesh=mesh)
    n_tokens = to_host(rollout.lengths)
    texts = [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
             for row, n in zip(to_host(rollout.completion_tokens), n_tokens)]
    voted = [_majority(texts[i * cfg.samples:(i + 1) * cfg.samples], extract_answer) for i in range(len(chunk))]
    scores.extend(reward_fn([r["prompt"] for r in chunk], voted, [r["answer"] for r in chunk]).tolist())
    lengths.extend(n_tokens.tolist())
    stopped.extend(to_host(rollout.stopped).tolist())
    overflow.extend(to_host(rollout.overflow).tolist())
  if any(overflow):
    warnings.warn(f"evaluate: {sum(overflow)} of {len(overflow)} rows overflowed their KV cache (capacity below what "
                  f"they needed): their answers differ from an unbounded cache's; raise the cache budget",
                  RuntimeWarning, stacklevel=2)
  return {"accuracy": float(np.mean(scores)), "mean_length": float(np.mean(lengths)),
          "stopped_fraction": float(np.mean(stopped)), "overflow_fraction": float(np.mean(overflow))}


def _majority(texts: Sequence[str], extract_answer: Callable) -> str:
  """The completion whose extracted answer is the most common (first such completion; ties: first seen)."""
  if len(texts) == 1:
    return texts[0]
  answers = [extract_answer(t) for t in texts]
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return texts[0]
  best = max(counts, key=lambda a: (counts[a], -answers.index(a)))
  return texts[answers.index(best)]


def task_evaluator(tokenizer, records: Sequence[Mapping[str, str]], *, task: str = "easy",
                   completion_len: int = 96, batch_size: int = 128) -> Callable[..., dict[str, float]]:
  """model -> `evaluate` metrics on an embedded task's records: greedy, exact match of the task's answer
  (`rewards.task_scoring`: the arithmetic answer line, or the looked-up value)."""
  cfg = EvalConfig(completion_len=completion_len, batch_size=batch_size)
  reward_fn, extract_answer = rewards.task_scoring(task)
  return lambda model: evaluate(model, tokenizer, records, reward_fn=reward_fn, extract_answer=extract_answer,
                                cfg=cfg)
