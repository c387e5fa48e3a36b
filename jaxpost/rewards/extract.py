"""Final-answer extraction from model completions.

`extract_answer` tries, in order: the last `\\boxed{...}` (nested braces allowed), the last `#### x` line, the last
"the answer is x", and the last number. `extract_arith_answer` reads the answer line of the embedded arithmetic
tasks (the last line, `=<integer>`); `extract_retrieval_answer` the value the key-value lookup task answers with.
"""

import re

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s*)?(?:\n|$)", re.IGNORECASE)
_LAST_NUMBER = re.compile(_NUMBER)
_ARITH_ANSWER = re.compile(r"=(-?\d+)")


def extract_boxed(text: str) -> str | None:
  """Contents of the last `\\boxed{...}` (or `\\fbox{...}`), matching nested braces; None if absent or unclosed."""
  starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
  if not starts:
    return None
  depth, start = 1, starts[-1]
  for i in range(start, len(text)):
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth == 0:
      return text[start:i].strip()
  return None


def _last_match(pattern: re.Pattern, text: str) -> str | None:
  matches = pattern.findall(text)
  return matches[-1].strip() if matches else None


def extract_answer(text: str) -> str | None:
  """The final answer of a free-form solution, or None when there is none."""
  for found in (extract_boxed(text), _last_match(_HASHES, text), _last_match(_ANSWER_IS, text)):
    if found:
      return found
  number = _last_match(_LAST_NUMBER, text)
  return number.replace(",", "") if number else None


def extract_arith_answer(text: str) -> str | None:
  """The integer on the arithmetic tasks' answer line (the last non-empty line, `=<integer>`), else None."""
  lines = text.strip().splitlines()
  match = _ARITH_ANSWER.fullmatch(lines[-1].strip()) if lines else None
  return match.group(1) if match else None


def extract_retrieval_answer(text: str) -> str | None:
  """The key-value lookup task's answer: the completion's first line, stripped; None if it is empty."""
  lines = text.strip().splitlines()
  return lines[0].strip() if lines else None
