"""Rewards computed in-process under a timeout, with failures counted instead of crashing or hanging the run.

A batch reward function is called once for the whole batch under `timeout_s`; if it raises or times out, each item
is scored alone (same timeout each), so one bad completion costs only its own reward. An item that raises, times
out or scores NaN/Inf gets reward 0 and is counted; more than `max_failed_fraction` of a batch failing is an error.
The timeout uses SIGALRM, so it interrupts Python code in the main thread (a reward stuck in native code needs
`IsolatedReward`, which runs in worker processes and handles its own timeouts).
"""

import contextlib
import dataclasses
import math
import signal
import threading
import warnings
from collections.abc import Sequence

import numpy as np

from jaxpost.errors import JaxpostError
from jaxpost.rewards.functions import RewardFn
from jaxpost.rewards.isolated import IsolatedReward


class RewardError(JaxpostError):
  """Too many items of a batch could not be scored."""


class _Timeout(Exception):
  pass


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardGuard:
  """`timeout_s` per call (None: no timeout); an error once more than `max_failed_fraction` of a batch fails."""

  timeout_s: float | None = 60.0
  max_failed_fraction: float = 0.5

  def __post_init__(self):
    if self.timeout_s is not None and self.timeout_s <= 0:
      raise ValueError(f"RewardGuard.timeout_s must be > 0 or None, got {self.timeout_s}")
    if not 0 <= self.max_failed_fraction <= 1:
      raise ValueError(f"RewardGuard.max_failed_fraction must be in [0, 1], got {self.max_failed_fraction}")

  def __call__(self, reward_fn: RewardFn, prompts: Sequence[str], completions: Sequence[str],
               answers: Sequence[str]) -> tuple[np.ndarray, int]:
    """(rewards [N] float32, number of failed items) of `reward_fn` on the batch."""
    n = len(completions)
    if isinstance(reward_fn, IsolatedReward):  # already isolated, timed and counted per item
      return np.asarray(reward_fn(prompts, completions, answers), np.float32), 0
    try:
      with self._deadline():
        rewards = np.asarray(reward_fn(prompts, completions, answers), np.float32).reshape(-1)
      if rewards.shape == (n,):
        failed = ~np.isfinite(rewards)
        return self._checked(np.where(failed, 0.0, rewards).astype(np.float32), int(failed.sum()), n,
                             f"non-finite reward {rewards[failed][0]}" if failed.any() else None)
      first = f"returned {rewards.shape[0]} rewards for {n} items"
    except _Timeout:
      first = f"the batch took longer than {self.timeout_s}s"
    except Exception as error:  # a user's reward may raise anything; each item is retried alone below
      first = f"{type(error).__name__}: {error}"
    rewards, failures = np.zeros(n, np.float32), []
    for i in range(n):
      try:
        with self._deadline():
          value = float(np.asarray(reward_fn([prompts[i]], [completions[i]], [answers[i]])).reshape(-1)[0])
        if math.isfinite(value):
          rewards[i] = value
          continue
        failures.append(f"non-finite reward {value}")
      except _Timeout:
        failures.append(f"timed out after {self.timeout_s}s")
      except Exception as error:
        failures.append(f"{type(error).__name__}: {error}")
    return self._checked(rewards, len(failures), n, failures[0] if failures else first)

  def _checked(self, rewards: np.ndarray, failed: int, n: int, first: str | None) -> tuple[np.ndarray, int]:
    if failed > self.max_failed_fraction * n:
      raise RewardError(f"reward: {failed} of {n} items could not be scored (first: {first}); more than "
                        f"max_failed_fraction={self.max_failed_fraction}")
    if failed:
      warnings.warn(f"reward: {failed} of {n} items could not be scored (first: {first}); they get reward 0",
                    RuntimeWarning, stacklevel=3)
    return rewards, failed

  @contextlib.contextmanager
  def _deadline(self):
    """Raises _Timeout in the main thread after `timeout_s` (no timeout off the main thread or when None)."""
    if self.timeout_s is None or threading.current_thread() is not threading.main_thread():
      yield
      return
    def expire(signum, frame):
      raise _Timeout
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
    try:
      yield
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, previous)
