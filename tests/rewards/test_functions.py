"""Reward functions: arithmetic and retrieval exact match, math-verify equivalence, format rewards, weighted sums."""

import numpy as np
import pytest

from jaxpost.data import arith
from jaxpost.rewards import (ARITH_FORMAT, BOXED_FORMAT, FormatReward, WeightedReward, arith_exact_match,
                             make_math_reward, math_verify_score, retrieval_exact_match, task_scoring)


def _corrupt(completion: str) -> str:
  """The same solution with the final answer off by one."""
  head, answer = completion.rsplit("=", 1)
  return f"{head}={int(answer) + 1}"


def test_arith_exact_match_and_format():
  records = arith.make_dataset("medium", "test", 8)
  prompts, answers = [r["prompt"] for r in records], [r["answer"] for r in records]
  completions = [r["completion"] for r in records]
  completions[1] = _corrupt(completions[1])  # Right format, wrong answer.
  completions[2] = completions[2] + "\nthanks"  # Right answer inside, but not on the last line.
  completions[3] = completions[3].replace("\n", "\n\n", 1)  # Right answer, broken layout.
  np.testing.assert_array_equal(arith_exact_match(prompts, completions, answers), [1, 0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(ARITH_FORMAT(prompts, completions, answers), [1, 1, 0, 0, 1, 1, 1, 1])
  with pytest.raises(ValueError, match="lengths differ"):
    arith_exact_match(prompts, completions[:3], answers)


def test_math_verify_in_process_and_isolated():
  cases = [  # (completion, answer, equal?) judged by hand.
      (r"so $x = \boxed{\frac{1}{2}}$", "0.5", 1.0),
      ("Natalia sold 72 clips.\n#### 72", "72", 1.0),
      ("The answer is (x+1)^2.", "x^2+2*x+1", 1.0),
      (r"\boxed{\sqrt{2}/2}", r"\frac{1}{\sqrt{2}}", 1.0),
      (r"\boxed{3}", "4", 0.0),
      ("no answer at all", "4", 0.0),
  ]
  assert [math_verify_score("", c, a) for c, a, _ in cases] == [e for _, _, e in cases]
  with make_math_reward(timeout_s=30.0, num_workers=1) as reward:
    rewards = reward([""] * len(cases), [c for c, _, _ in cases], [a for _, a, _ in cases])
  np.testing.assert_array_equal(rewards, [e for _, _, e in cases])


def test_format_rewards():
  completions = [r"so \boxed{12}", "12", "\\boxed{}", "a\n\\boxed{x}\nb"]
  np.testing.assert_array_equal(BOXED_FORMAT([""] * 4, completions, [""] * 4), [1, 0, 0, 1])
  think = FormatReward(pattern=r"<think>.*</think>\s*\d+")
  np.testing.assert_array_equal(think(["", ""], ["<think>a\nb</think> 4", "4"], ["", ""]), [1, 0])
  with pytest.raises(Exception, match="unterminated|missing"):
    FormatReward(pattern="(")


def test_weighted_sum():
  records = arith.make_dataset("easy", "test", 4)
  prompts, answers = [r["prompt"] for r in records], [r["answer"] for r in records]
  completions = [r["completion"] for r in records]
  completions[0] = _corrupt(completions[0])
  completions[1] = "=" + answers[1]  # Right answer, no worked solution.
  total = WeightedReward(terms={"correct": (arith_exact_match, 1.0), "format": (ARITH_FORMAT, 0.25)})
  parts = total.components(prompts, completions, answers)
  np.testing.assert_array_equal(parts["correct"], [0, 1, 1, 1])
  np.testing.assert_array_equal(parts["format"], [1, 0, 1, 1])
  np.testing.assert_allclose(total(prompts, completions, answers), [0.25, 1.0, 1.25, 1.25])
  with pytest.raises(ValueError, match="term 'x' must be a"):
    WeightedReward(terms={"x": arith_exact_match})


def test_retrieval_exact_match_reads_the_first_line_of_the_completion():
  from jaxpost.data import kv_retrieval
  records = kv_retrieval.make_dataset("test", 4, cfg=kv_retrieval.KVRetrievalConfig(num_pairs=5))
  prompts, answers = [r["prompt"] for r in records], [r["answer"] for r in records]
  wrong = str((int(answers[1]) + 1) % 1000).zfill(3)
  completions = [answers[0], wrong, f" {answers[2]} \nmore", f"\n{answers[3]}"]
  np.testing.assert_array_equal(retrieval_exact_match(prompts, completions, answers), [1, 0, 1, 1])
  assert retrieval_exact_match(prompts[:1], [""], answers[:1]).tolist() == [0]


@pytest.mark.parametrize("task,expected", [("easy", arith_exact_match), ("hard", arith_exact_match),
                                           ("kv_retrieval", retrieval_exact_match)])
def test_task_scoring_pairs_each_task_with_its_reward(task, expected):
  assert task_scoring(task)[0] is expected


def test_task_scoring_refuses_an_unknown_task():
  with pytest.raises(ValueError, match="task_scoring: task must be one of"):
    task_scoring("gsm8k")
