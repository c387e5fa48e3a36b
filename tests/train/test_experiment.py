"""The experiment command line: typed overrides, unknown keys refused with a suggestion, config recorded."""

import hashlib
import json
import os
import re

import ml_collections
import pytest
from flax import nnx

from jaxpost import models
from jaxpost.experiment import apply_override, parse_args, run_experiment
from jaxpost.files import read_json
from jaxpost.models import save_pretrained
from jaxpost.train import NonFiniteLossError
from tests.train.helpers import TINY


def _config():
  return ml_collections.ConfigDict(dict(
      total_steps=10, learning_rate=1e-3, name="sft", use_packing=True, eval_every=None, sizes=(1, 2),
      optimizer=dict(warmup_steps=5, schedule="cosine")))


def test_overrides_are_parsed_to_the_field_types():
  config = _config()
  workdir = parse_args(["--workdir", "/tmp/x", "--config.total_steps=20", "--config.learning_rate", "3e-4",
                        "--config.name=grpo", "--config.use_packing=false", "--config.eval_every=50",
                        "--config.sizes=(4, 8, 16)", "--config.optimizer.warmup_steps=0"], config)
  assert workdir == "/tmp/x"
  assert config.total_steps == 20 and isinstance(config.total_steps, int)
  assert config.learning_rate == 3e-4 and config.name == "grpo" and config.use_packing is False
  assert config.eval_every == 50 and config.sizes == (4, 8, 16) and config.optimizer.warmup_steps == 0
  apply_override(config, "learning_rate", "1")
  assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)


@pytest.mark.parametrize("args, message", [
    (["--config.lerning_rate=1"], r"unknown config key --config.lerning_rate; did you mean --config.learning_rate\?"),
    (["--config.optimizer.warmup=1"], r"did you mean --config.optimizer.warmup_steps\?"),
    (["--config.zzz=1"], r"^unknown config key --config.zzz$"),
    (["--config.total_steps=ten"], r"--config.total_steps: cannot parse 'ten' as int"),
    (["--config.use_packing=maybe"], r"cannot parse 'maybe' as bool"),
    (["--config.sizes=3"], r"'3' is not a tuple"),
    (["--config.optimizer=1"], r"is a group of settings"),
    (["--lr=1"], r"unexpected argument '--lr=1'"),
])
def test_bad_overrides_are_refused(args, message):
  with pytest.raises(ValueError, match=message):
    parse_args(["--workdir=/tmp/x", *args], _config())


def test_workdir_is_required():
  with pytest.raises(ValueError, match="--workdir DIR is required"):
    parse_args(["--config.total_steps=3"], _config())


def test_run_experiment_exits_with_one_line_and_records_the_config(tmp_path, capsys):
  calls = []
  main = lambda config, workdir: calls.append((config.total_steps, workdir))
  with pytest.raises(SystemExit) as exit_info:
    run_experiment(_config, main, ["--workdir", str(tmp_path), "--config.totl_steps=3"])
  assert exit_info.value.code == 2 and not calls
  err = capsys.readouterr().err
  assert err == "error: unknown config key --config.totl_steps; did you mean --config.total_steps?\n"

  run_experiment(_config, main, ["--workdir", str(tmp_path), "--config.total_steps=3"])
  assert calls == [(3, str(tmp_path))]
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 3
  with pytest.warns(UserWarning, match="different config"):
    run_experiment(_config, main, ["--workdir", str(tmp_path), "--config.total_steps=4"])


def test_a_value_error_from_main_is_one_line_unless_the_traceback_is_asked_for(tmp_path, capsys, monkeypatch):
  def main(config, workdir):
    raise ValueError(f"total_steps must be even, got {config.total_steps}")

  args = ["--workdir", str(tmp_path), "--config.total_steps=3"]
  monkeypatch.delenv("JAXPOST_TRACEBACK", raising=False)
  with pytest.raises(SystemExit) as exit_info:
    run_experiment(_config, main, args)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == ("error: total_steps must be even, got 3 "
                                     "(JAXPOST_TRACEBACK=1 shows where it was raised)\n")
  monkeypatch.setenv("JAXPOST_TRACEBACK", "1")
  with pytest.raises(ValueError, match="must be even, got 3"):
    run_experiment(_config, main, args)


def _digests(directory) -> dict[str, str]:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _truncated_safetensors(tmp_path):
  path = tmp_path / "hf"
  save_pretrained(models.Decoder(TINY, rngs=nnx.Rngs(0)), str(path))
  data = (path / "model.safetensors").read_bytes()
  (path / "model.safetensors").write_bytes(data[:len(data) // 2])
  return str(path)


def _raise(error):
  raise error


@pytest.mark.parametrize("failure, message", [
    (lambda tmp: _raise(NonFiniteLossError("non-finite loss nan at step 6; stopped")),
     r"non-finite loss nan at step 6"),
    (lambda tmp: open(tmp / "missing.jsonl"), r"No such file or directory: '.*missing.jsonl'"),
    (lambda tmp: (tmp / "bad.json").write_text('{"a": 1,\n oops}') and read_json(str(tmp / "bad.json")),
     r"bad.json:2: not valid JSON"),
    (lambda tmp: models.from_pretrained(_truncated_safetensors(tmp)),
     r"hf/model.safetensors: not a readable safetensors file .*truncated"),
    (lambda tmp: (tmp / "a_file").write_text("x") and os.makedirs(tmp / "a_file" / "sub"), r"File exists|Not a dir"),
])
def test_every_anticipated_failure_is_one_line_with_status_1(tmp_path, capsys, monkeypatch, failure, message):
  monkeypatch.delenv("JAXPOST_TRACEBACK", raising=False)
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  with pytest.raises(SystemExit) as exit_info:
    run_experiment(_config, lambda config, workdir: failure(scratch), ["--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert exit_info.value.code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
  assert re.search(message, err), err
  assert not (tmp_path / "run" / "config.json").exists()  # nothing ran: the workdir keeps no config


def test_a_failed_resume_leaves_every_file_as_it_was(tmp_path, capsys):
  run_experiment(_config, lambda config, workdir: (tmp_path / "metrics.jsonl").write_text("{}\n"),
                 ["--workdir", str(tmp_path), "--config.total_steps=3"])
  before = _digests(tmp_path)
  with pytest.warns(UserWarning, match="different config"), pytest.raises(SystemExit):
    run_experiment(_config, lambda config, workdir: _raise(ValueError("refused")),
                   ["--workdir", str(tmp_path), "--config.total_steps=4"])
  assert _digests(tmp_path) == before and "error: refused" in capsys.readouterr().err
  with pytest.warns(UserWarning, match="different config"):
    run_experiment(_config, lambda config, workdir: None, ["--workdir", str(tmp_path), "--config.total_steps=4"])
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 4  # written once the run succeeded


def test_restart_keeps_the_previous_contents_aside(tmp_path):
  run_experiment(_config, lambda config, workdir: (tmp_path / "metrics.jsonl").write_text("old\n"),
                 ["--workdir", str(tmp_path)])
  before = _digests(tmp_path)
  seen = []
  run_experiment(_config, lambda config, workdir: seen.append(sorted(os.listdir(workdir))),
                 ["--workdir", str(tmp_path), "--config.restart=true"])
  (aside,) = tmp_path.glob("restarted-*")
  assert _digests(aside) == before
  assert [[n for n in names if not n.startswith("restarted-")] for names in seen] == [["config.json"]]
