"""Answer extraction: boxed with nested braces, ####, "the answer is", last number, the arithmetic answer line."""

import pytest

from jaxpost.data import arith
from jaxpost.rewards import extract


@pytest.mark.parametrize("text,expected", [
    (r"so \boxed{42}.", "42"),
    (r"first \boxed{1} then \boxed{\frac{a}{b+c}}", r"\frac{a}{b+c}"),
    (r"\boxed{\left\{1, 2\right\}} done", r"\left\{1, 2\right\}"),
    (r"\boxed {x^{2}}", "x^{2}"),
    (r"\fbox{7}", "7"),
    (r"\boxed{3", None),
    ("no box here", None),
])
def test_boxed(text, expected):
  assert extract.extract_boxed(text) == expected


@pytest.mark.parametrize("text,expected", [
    (r"We get 3, so \boxed{\dfrac{1}{2}}. Checking: 5", r"\dfrac{1}{2}"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("#### 1\nmore\n#### 1,000", "1,000"),
    ("Adding up, the answer is 17.", "17"),
    ("The Answer is: $\\frac{3}{4}$\n", "\\frac{3}{4}"),
    ("it is -3.5 or maybe 1,234 apples", "1234"),
    ("nothing numeric", None),
])
def test_extract_answer(text, expected):
  assert extract.extract_answer(text) == expected


def test_arith_answer_line():
  for record in arith.make_dataset("hard", "train", 20):
    assert extract.extract_arith_answer(record["completion"]) == record["answer"]
  assert extract.extract_arith_answer("12+3\n2+3+0=05\n=15\n") == "15"
  assert extract.extract_arith_answer("=15\nand more") is None
  assert extract.extract_arith_answer("=1 5") is None
  assert extract.extract_arith_answer("") is None
