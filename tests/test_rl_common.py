"""The RL experiments' start accuracy: measured once, written atomically, a damaged file named in one line."""

import pytest

from experiments.rl_common import _start_accuracy
from jaxpost.errors import JaxpostError


def test_start_accuracy_is_measured_once_and_a_damaged_file_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr("experiments.rl_common.models.from_pretrained", lambda checkpoint: "model")
  calls = []
  evaluator = lambda model: calls.append(model) or {"accuracy": 0.375}
  assert _start_accuracy(type("C", (), {"checkpoint": "ckpt"}), str(tmp_path), evaluator) == 0.375
  assert _start_accuracy(type("C", (), {"checkpoint": "ckpt"}), str(tmp_path), evaluator) == 0.375
  assert calls == ["model"] and not list(tmp_path.glob("*.tmp"))
  (tmp_path / "start_accuracy.txt").write_text("")  # what a crashed start used to leave behind
  with pytest.raises(JaxpostError, match=r"start_accuracy.txt: holds '', not an accuracy; delete it"):
    _start_accuracy(type("C", (), {"checkpoint": "ckpt"}), str(tmp_path), evaluator)
