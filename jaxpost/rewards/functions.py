"""Reward functions with the batch API `reward_fn(prompts, completions, answers) -> float32 [B]`.

Exact match and format rewards are fast and run in-process; mathematical equivalence (math-verify, which can hang
on adversarial input) runs in worker processes through `IsolatedReward`. `WeightedReward` sums rewards.
"""

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxpost.data.arith import SOLUTION_PATTERN
from jaxpost.data.tasks import EMBEDDED_TASKS
from jaxpost.rewards.extract import extract_answer, extract_arith_answer, extract_retrieval_answer
from jaxpost.rewards.isolated import IsolatedReward, check_lengths

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


def _exact_match(extract: Callable[[str], str | None], prompts: Sequence[str], completions: Sequence[str],
                 answers: Sequence[str]) -> np.ndarray:
  """1 where `extract` of the completion equals the stripped reference answer, else 0."""
  check_lengths(prompts, completions, answers)
  return np.asarray([float(extract(c) == a.strip()) for c, a in zip(completions, answers)], np.float32)


def arith_exact_match(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
  """1 where the arithmetic answer line equals the reference integer exactly, else 0."""
  return _exact_match(extract_arith_answer, prompts, completions, answers)


def retrieval_exact_match(prompts: Sequence[str], completions: Sequence[str],
                          answers: Sequence[str]) -> np.ndarray:
  """1 where the key-value lookup's answer (the completion's first line) is the queried value, else 0."""
  return _exact_match(extract_retrieval_answer, prompts, completions, answers)


def task_scoring(task: str) -> tuple[RewardFn, Callable[[str], str | None]]:
  """(reward function, answer extractor) of an embedded task: kv_retrieval, or an arithmetic task."""
  if task not in EMBEDDED_TASKS:
    raise ValueError(f"task_scoring: task must be one of {EMBEDDED_TASKS}, got {task!r}")
  if task == "kv_retrieval":
    return retrieval_exact_match, extract_retrieval_answer
  return arith_exact_match, extract_arith_answer


def _as_math(text: str) -> str:
  return text if "$" in text else f"${text}$"


def math_verify_score(prompt: str, completion: str, answer: str) -> float:
  """1.0 if the completion's extracted final answer is mathematically equal to `answer` (math-verify), else 0.0.

  Slow and possibly hanging on hostile input: run it through `IsolatedReward`, not in the training process.
  """
  del prompt
  import math_verify  # Imported in the worker only; it pulls in sympy.

  predicted = extract_answer(completion)
  if predicted is None:
    return 0.0
  gold = math_verify.parse(_as_math(answer))
  return float(bool(gold) and math_verify.verify(gold, math_verify.parse(_as_math(predicted))))


def make_math_reward(*, timeout_s: float = 10.0, num_workers: int = 2) -> IsolatedReward:
  """The math-verify equivalence reward, isolated in `num_workers` processes with a per-item timeout."""
  return IsolatedReward(math_verify_score, timeout_s=timeout_s, num_workers=num_workers, name="math_verify")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FormatReward:
  """1 where the whole completion (stripped) matches `pattern`, else 0."""

  pattern: str

  def __post_init__(self):
    re.compile(self.pattern)  # Fails here, with the regex error, rather than at the first call.

  def __call__(self, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    check_lengths(prompts, completions, answers)
    regex = re.compile(self.pattern, re.DOTALL)
    return np.asarray([float(regex.fullmatch(c.strip()) is not None) for c in completions], np.float32)


BOXED_FORMAT = FormatReward(pattern=r".*\\boxed\{.+\}.*")
ARITH_FORMAT = FormatReward(pattern=SOLUTION_PATTERN)  # The arithmetic tasks' worked-solution layout.


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightedReward:
  """`sum_k weight_k * reward_k`; `components` gives each term (unweighted, for logging), `combine` their sum."""

  terms: Mapping[str, tuple[RewardFn, float]]

  def __post_init__(self):
    if not self.terms:
      raise ValueError("WeightedReward needs at least one term")
    for name, term in self.terms.items():
      if not (isinstance(term, tuple) and len(term) == 2 and callable(term[0])):
        raise ValueError(f"term {name!r} must be a (reward_fn, weight) pair, got {term!r}")

  def components(self, prompts: Sequence[str], completions: Sequence[str],
                 answers: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: np.asarray(fn(prompts, completions, answers), np.float32)
            for name, (fn, _) in self.terms.items()}

  def combine(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    return sum(weight * parts[name] for name, (_, weight) in self.terms.items()).astype(np.float32)

  def __call__(self, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    return self.combine(self.components(prompts, completions, answers))
