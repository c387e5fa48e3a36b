"""The embedded arithmetic tasks: answers, worked solutions re-checked line by line, splits, determinism."""

import re

import pytest

from jaxpost.data import arith

_LINE = {"+": re.compile(r"(\d)\+(\d)\+(\d)=(\d\d)"), "-": re.compile(r"(\d)-(\d)-(\d)=(\d)b([01])"),
         "*": re.compile(r"(\d)\*(\d)\+(\d)=(\d\d)")}


def _check_block(header: str, lines: list[str], result_line: str) -> int:
  """Re-derives one block from its own lines with digit arithmetic; returns its result."""
  x_text, op, y_text = re.fullmatch(r"(\d+)([-+*])(\d+)", header).groups()
  x, y = int(x_text), int(y_text)
  width = len(x_text) if op == "*" else max(len(x_text), len(y_text))
  assert len(lines) == width, (header, lines)
  carry, digits = 0, []
  for i, line in enumerate(lines):
    fields = [int(v) for v in _LINE[op].fullmatch(line).groups()]
    dx, dy, carry_in = fields[:3]
    assert dx == x // 10**i % 10 and carry_in == carry, (header, line)
    if op == "+":
      assert dy == y // 10**i % 10 and fields[3] == dx + dy + carry_in
      digits.append(fields[3] % 10); carry = fields[3] // 10
    elif op == "-":
      assert dy == y // 10**i % 10 and fields[3] - 10 * fields[4] == dx - dy - carry_in
      digits.append(fields[3]); carry = fields[4]
    else:
      assert dy == y and fields[3] == dx * dy + carry_in
      digits.append(fields[3] % 10); carry = fields[3] // 10
  if op == "-":
    assert carry == 0, header  # No borrow out of the top digit: results are never negative.
  value = carry * 10**width + sum(d * 10**i for i, d in enumerate(digits))
  assert result_line == f"={value}"
  return value


def _check_solution(completion: str) -> list[int]:
  """Splits a solution into blocks (header, digit lines, result) and checks each; returns the block results."""
  results, block = [], []
  for line in completion.split("\n"):
    block.append(line)
    if line.startswith("="):
      results.append(_check_block(block[0], block[1:-1], block[-1]))
      block = []
  assert not block, completion
  return results


@pytest.mark.parametrize("task,n_steps", [("easy", 1), ("medium", 2), ("hard", 3)])
def test_answers_and_worked_solutions_are_right(task, n_steps):
  records = arith.make_dataset(task, "train", 300, seed=1)
  for r in records:
    assert set(r) == {"prompt", "completion", "answer"}
    assert int(r["answer"]) == eval(r["prompt"]) >= 0  # Python evaluates the expression independently.
    results = _check_solution(r["completion"])
    assert len(results) == n_steps and str(results[-1]) == r["answer"]
    assert r["completion"].endswith("\n=" + r["answer"])


def test_easy_is_short_and_in_range():
  records = arith.make_dataset("easy", "test", 500, seed=0)
  ops = {"+": 0, "-": 0, "*": 0}
  for r in records:
    x, op, y = re.fullmatch(r"(\d+)([-+*])(\d+)", r["prompt"]).groups()
    ops[op] += 1
    if op == "*":
      assert 10 <= int(x) <= 99 and 2 <= int(y) <= 9
    else:
      assert int(x) <= 999 and int(y) <= 999
    assert len(r["prompt"]) + len(r["completion"]) < 60
  assert min(ops.values()) > 100  # All three operations are well represented.


def test_hard_uses_longer_numbers():
  records = arith.make_dataset("hard", "train", 200)
  numbers = [int(v) for r in records for v in re.findall(r"\d+", r["prompt"])]
  assert max(numbers) >= 1000 and max(len(r["prompt"]) + len(r["completion"]) for r in records) < 260


def test_deterministic_and_seeded():
  assert arith.make_dataset("medium", "train", 50, seed=3) == arith.make_dataset("medium", "train", 50, seed=3)
  assert arith.make_dataset("medium", "train", 50, seed=3) != arith.make_dataset("medium", "train", 50, seed=4)
  assert arith.make_dataset("easy", "train", 20) == arith.make_dataset("easy", "train", 40)[:20]


@pytest.mark.parametrize("task", arith.TASKS)
def test_splits_are_disjoint(task):
  train = {r["prompt"] for seed in (0, 1) for r in arith.make_dataset(task, "train", 1500, seed=seed)}
  test = {r["prompt"] for r in arith.make_dataset(task, "test", 300, seed=0)}
  assert not train & test
  assert all(arith.split_of(p) == "test" for p in test)


def test_split_fraction():
  prompts = [f"{i}+{i + 7}" for i in range(5000)]
  fraction = sum(arith.split_of(p) == "test" for p in prompts) / len(prompts)
  assert 0.08 < fraction < 0.12


def test_bad_arguments():
  with pytest.raises(ValueError, match="task"):
    arith.make_dataset("impossible", "train", 1)
  with pytest.raises(ValueError, match="split"):
    arith.make_dataset("easy", "valid", 1)
