"""The RL experiments' start accuracy: measured once, written atomically, a damaged file named in one line."""

import importlib
import re

import pytest

from experiments.rl_common import _start_accuracy
from jaxpost.errors import JaxpostError
from jaxpost.experiment import run_experiment


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


@pytest.mark.parametrize("module, args, flag", [
    ("sft_arith", ["--config.train.total_steps=20"], r"--config.optimizer.warmup_steps=60 is more than "
                                                     r"--config.train.total_steps=20"),
    ("grpo_arith", ["--config.steps=2", "--config.warmup_steps=9"],
     r"--config.warmup_steps=9 is more than the 2 optimizer updates"),
])
def test_a_refused_config_names_the_flag_and_leaves_no_file(tmp_path, capsys, monkeypatch, module, args, flag):
  monkeypatch.delenv("JAXPOST_TRACEBACK", raising=False)
  experiment = importlib.import_module(f"experiments.{module}")
  with pytest.raises(SystemExit) as exit_info:
    run_experiment(experiment.get_config, experiment.main, ["--workdir", str(tmp_path / "run"), *args])
  assert exit_info.value.code == 1 and re.search(flag, capsys.readouterr().err)
  assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
