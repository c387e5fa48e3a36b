"""In-process rewards under the guard: a raising, hanging or NaN item is a counted zero, too many is an error."""

import time

import numpy as np
import pytest

from jaxpost.rewards.guard import RewardError, RewardGuard


def _per_item(score):
  """A batch reward built from a per-completion function, as user rewards usually are."""
  return lambda prompts, completions, answers: np.asarray([score(c) for c in completions], np.float32)


def _score(completion: str) -> float:
  if completion == "raise":
    raise KeyError("no answer field")
  if completion == "hang":
    time.sleep(30)
  return float("nan") if completion == "nan" else float(len(completion))


@pytest.mark.parametrize("bad, first", [("raise", "KeyError"), ("hang", "timed out after 0.5s"),
                                        ("nan", "non-finite reward nan")])
def test_a_bad_item_gets_zero_and_is_counted(bad, first):
  completions = ["ab", bad, "abcd", "a"]
  guard = RewardGuard(timeout_s=0.5)
  start = time.monotonic()
  with pytest.warns(RuntimeWarning, match=rf"reward: 1 of 4 items could not be scored \(first: {first}"):
    rewards, failed = guard(_per_item(_score), [""] * 4, completions, [""] * 4)
  assert time.monotonic() - start < 5
  np.testing.assert_array_equal(rewards, [2, 0, 4, 1])
  assert failed == 1


def test_more_than_the_allowed_fraction_is_an_error():
  guard = RewardGuard(timeout_s=None, max_failed_fraction=0.25)
  with pytest.raises(RewardError, match=r"2 of 4 items could not be scored .*max_failed_fraction=0.25"):
    guard(_per_item(_score), [""] * 4, ["a", "raise", "nan", "b"], [""] * 4)


def test_a_healthy_batch_is_scored_in_one_call():
  calls = []

  def reward(prompts, completions, answers):
    calls.append(len(completions))
    return np.ones(len(completions))

  rewards, failed = RewardGuard()(reward, ["p"] * 3, ["c"] * 3, ["a"] * 3)
  assert calls == [3] and failed == 0 and rewards.dtype == np.float32
