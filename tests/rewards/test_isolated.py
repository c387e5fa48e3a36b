"""Isolated rewards: a hanging or raising reward gives 0 and a counted warning, quickly, and the pool recovers."""

import os
import time

import numpy as np
import pytest

from jaxpost.rewards import IsolatedReward


# Module-level so spawned workers can unpickle them (they import this module).
def length_or_misbehave(prompt: str, completion: str, answer: str) -> float:
  if completion == "hang":
    time.sleep(3600)
  if completion == "raise":
    raise ZeroDivisionError("bad item")
  if completion == "nan":
    return float("nan")
  if completion == "die":
    os._exit(3)
  return float(len(prompt) + len(completion) + len(answer))


def test_hang_and_raise_give_zero_with_counted_warning():
  start = time.monotonic()
  with IsolatedReward(length_or_misbehave, timeout_s=1.0, num_workers=2) as reward:
    prompts, answers = ["ab", "c", "d", "efg", "h", "i"], ["1", "22", "3", "4", "5", "6"]
    completions = ["xyz", "hang", "raise", "q", "nan", "hang"]
    with pytest.warns(RuntimeWarning, match=r"2 of 6 items timed out after 1.0s and 2 failed \(first error: "
                                            r"ZeroDivisionError: bad item\)"):
      rewards = reward(prompts, completions, answers)
    np.testing.assert_array_equal(rewards, [6, 0, 0, 5, 0, 0])  # Independent: len(p) + len(c) + len(a).
    assert rewards.dtype == np.float32
    assert reward.stats == {"items": 6, "timeouts": 2, "errors": 2}
    # The replaced workers serve the next call normally, with no warning.
    again = reward(["a", "bb"], ["c", "dd"], ["e", "ff"])
    np.testing.assert_array_equal(again, [3, 6])
    assert reward.stats == {"items": 8, "timeouts": 2, "errors": 2}
    processes = [w.process for w in reward._workers]
  assert time.monotonic() - start < 30  # Bounded by the timeout and worker start-up, not by the hang.
  assert not any(p.is_alive() for p in processes)  # Closing stops the workers.


def test_dead_worker_is_replaced():
  with IsolatedReward(length_or_misbehave, timeout_s=5.0, num_workers=1) as reward:
    with pytest.warns(RuntimeWarning, match=r"1 failed \(first error: worker died \(exit 3\)\)"):
      rewards = reward(["a", "b"], ["die", "cc"], ["x", "y"])
    np.testing.assert_array_equal(rewards, [0, 4])
    reward._workers[0].process.kill()  # Dies while idle, between calls: replaced before its item is lost.
    reward._workers[0].process.join()
    np.testing.assert_array_equal(reward(["a"], ["b"], ["c"]), [3])
    assert reward.stats == {"items": 3, "timeouts": 0, "errors": 1}


def test_rejects_fork_and_bad_lengths():
  with pytest.raises(ValueError, match="fork is unsafe"):
    IsolatedReward(length_or_misbehave, start_method="fork")
  with IsolatedReward(length_or_misbehave, num_workers=1) as reward:
    with pytest.raises(ValueError, match="lengths differ"):
      reward(["a"], ["b", "c"], ["d"])
  with pytest.raises(RuntimeError, match="closed"):
    reward(["a"], ["b"], ["c"])
