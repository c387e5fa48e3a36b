"""Embedded verifiable arithmetic tasks with worked solutions, generated from a seed (no download).

A solution is one block per operation, written so that a character-level model needs only short-range lookups:
the operation (`478+56`), one line per digit from the right with the carry made explicit, then the result:

  478+56        digits right to left: a+b+carry=two-digit sum (its tens digit is the next carry)
  8+6+0=14
  7+5+1=13      subtraction lines read 2-3-0=9b1 (digit 9, borrow 1);
  4+0+1=05      multiplication lines 7*6+4=46 (n-digit x 1-digit)
  =534

The last line `=<integer>` is the final answer. Tasks: `easy` (one operation: up to 3-digit + and -, 2-digit x
1-digit), `medium` (two operations, e.g. `(a+b)*c`), `hard` (three, e.g. `(a+b)*c-d`, with up to 4-digit numbers).
Results are never negative. Each problem belongs to one split by a hash of its prompt, so `test` never shares a
problem with `train`, whatever the seeds.
"""

import hashlib
import random

TASKS = ("easy", "medium", "hard")
SPLITS = ("train", "test")
TEST_FRACTION_PER_MILLE = 100

# Expression templates: the prompt pattern and its steps; "_" is the previous step's result.
_TEMPLATES = {
    "easy": (("a+b", (("a", "+", "b"),)), ("a-b", (("a", "-", "b"),)), ("a*c", (("a", "*", "c"),))),
    "medium": (("(a+b)*c", (("a", "+", "b"), ("_", "*", "c"))), ("(a-b)*c", (("a", "-", "b"), ("_", "*", "c"))),
               ("a*c+b", (("a", "*", "c"), ("_", "+", "b"))), ("a+b-d", (("a", "+", "b"), ("_", "-", "d")))),
    "hard": (("(a+b)*c-d", (("a", "+", "b"), ("_", "*", "c"), ("_", "-", "d"))),
             ("(a-b)*c+d", (("a", "-", "b"), ("_", "*", "c"), ("_", "+", "d"))),
             ("(a+b-d)*c", (("a", "+", "b"), ("_", "-", "d"), ("_", "*", "c"))),
             ("a*c+b-d", (("a", "*", "c"), ("_", "+", "b"), ("_", "-", "d")))),
}
# The grammar of a worked solution (for format rewards): blocks of header, digit lines, result.
_DIGIT_LINE = r"(?:\d\+\d\+\d=\d\d|\d-\d-\d=\db[01]|\d\*\d\+\d=\d\d)"
_BLOCK = rf"\d+[-+*]\d+(?:\n{_DIGIT_LINE})+\n=\d+"
SOLUTION_PATTERN = rf"{_BLOCK}(?:\n{_BLOCK})*"
_MAX_DIGITS = {"easy": 3, "medium": 3, "hard": 4}
_MIN_DIGITS = {"easy": 1, "medium": 1, "hard": 2}


def _digits_rtl(x: int) -> list[int]:
  return [int(ch) for ch in reversed(str(x))]


def column_lines(x: int, op: str, y: int) -> list[str]:
  """The digit lines of `x op y`, rightmost digit first (for `*`, `y` must be one digit; for `-`, x >= y)."""
  xs, ys = _digits_rtl(x), _digits_rtl(y)
  lines, carry = [], 0
  for i, dx in enumerate(xs if op == "*" else xs + [0] * (len(ys) - len(xs))):
    dy = ys[i] if i < len(ys) else 0
    if op == "+":
      total = dx + dy + carry
      lines.append(f"{dx}+{dy}+{carry}={total:02d}")
      carry = total // 10
    elif op == "-":
      diff = dx - dy - carry
      lines.append(f"{dx}-{dy}-{carry}={diff % 10}b{int(diff < 0)}")
      carry = int(diff < 0)
    else:
      total = dx * y + carry
      lines.append(f"{dx}*{y}+{carry}={total:02d}")
      carry = total // 10
  return lines


def _apply(x: int, op: str, y: int) -> int:
  return {"+": x + y, "-": x - y, "*": x * y}[op]


def solve(steps: list[tuple[int, str, int]]) -> str:
  """The worked solution of a sequence of operations, one block each, ending with the answer line."""
  blocks = [f"{x}{op}{y}\n" + "\n".join(column_lines(x, op, y)) + f"\n={_apply(x, op, y)}" for x, op, y in steps]
  return "\n".join(blocks)


def split_of(prompt: str) -> str:
  """The split a problem belongs to, from a hash of its prompt (about 10% test)."""
  h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
  return "test" if h % 1000 < TEST_FRACTION_PER_MILLE else "train"


def _number(rng: random.Random, task: str) -> int:
  digits = rng.randint(_MIN_DIGITS[task], _MAX_DIGITS[task])
  return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def _sample(rng: random.Random, task: str) -> dict[str, str] | None:
  """One problem, or None when an intermediate result would be negative (the caller draws again)."""
  pattern, template = rng.choice(_TEMPLATES[task])
  values = {"a": _number(rng, task), "b": _number(rng, task), "d": _number(rng, task), "c": rng.randint(2, 9)}
  if pattern == "a*c":  # The easy multiplication: 2-digit x 1-digit.
    values["a"] = rng.randint(10, 99)
  if template[0] == ("a", "-", "b") and values["a"] < values["b"]:
    values["a"], values["b"] = values["b"], values["a"]
  steps, result = [], None
  for left, op, right in template:
    x = result if left == "_" else values[left]
    if op == "-" and x < values[right]:
      return None
    steps.append((x, op, values[right]))
    result = _apply(x, op, values[right])
  prompt = "".join(str(values[ch]) if ch in values else ch for ch in pattern)
  return {"prompt": prompt, "completion": solve(steps), "answer": str(result)}


def make_dataset(task: str, split: str, n: int, seed: int = 0) -> list[dict[str, str]]:
  """`n` records {"prompt", "completion", "answer"} of `task` from `split`, the same for the same arguments."""
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = random.Random(f"jaxpost.arith/{task}/{split}/{seed}")
  return draw_from_split(lambda: _sample(rng, task), split, n)


def draw_from_split(sample, split: str, n: int) -> list[dict[str, str]]:
  """The first `n` records from repeated `sample()` calls whose prompt hashes into `split` (None = redraw)."""
  records = []
  while len(records) < n:
    record = sample()
    if record is not None and split_of(record["prompt"]) == split:
      records.append(record)
  return records
