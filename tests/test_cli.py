"""The `jaxpost` command: experiment listing, resolved configs, one-line errors, and checkpoint export."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxpost import cli
from jaxpost.models import Decoder, from_pretrained, presets, save_pretrained
from jaxpost.train import Checkpointer, CheckpointConfig, MeshConfig, OptimizerConfig, create_train_state, make_mesh
from jaxpost.train import param_shardings, split_model
from tests.train.helpers import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def _experiment_files() -> dict[str, str]:
  """name -> module docstring's first paragraph, for files of experiments/ defining get_config and main."""
  found = {}
  for path in glob.glob(os.path.join(REPO, "experiments", "*.py")):
    source = open(path, encoding="utf-8").read()
    if "\ndef get_config(" in source and "\ndef main(" in source:
      docstring = source.split('"""')[1]
      found[os.path.basename(path)[:-3]] = " ".join(docstring.split("\n\n")[0].split())
  return found


def test_list_shows_every_experiment_with_its_summary(capsys):
  code, out, err = _run_cli(capsys, "list")
  expected = _experiment_files()
  assert code == 0 and not err and len(expected) >= 2
  lines = out.strip().split("\n")
  assert [line.split()[0] for line in lines] == sorted(expected)
  for line in lines:
    name, summary = line.split(None, 1)
    assert summary == expected[name]


def test_config_prints_the_config_with_overrides_applied(capsys):
  from experiments import sft_arith
  code, out, err = _run_cli(capsys, "config", "sft_arith", "--config.task=medium", "--config.train.total_steps", "7",
                            "--config.optimizer.learning_rate=3e-4", "--config.pack=false", "--workdir", "/tmp/x")
  assert code == 0 and not err
  expected = json.loads(sft_arith.get_config().to_json())
  expected["task"], expected["pack"] = "medium", False
  expected["train"]["total_steps"], expected["optimizer"]["learning_rate"] = 7, 3e-4
  assert json.loads(out) == expected


@pytest.mark.parametrize("argv, message", [
    (["config", "sft_arth"], "error: unknown experiment 'sft_arth'; did you mean 'sft_arith'? (known: "),
    (["run", "dms_retrofti", "--workdir", "/tmp/x"], "error: unknown experiment 'dms_retrofti'; did you mean "
                                                     "'dms_retrofit'?"),
    (["config", "sft_arith", "--config.tsk=hard"], "error: unknown config key --config.tsk; did you mean "
                                                   "--config.task?"),
    (["config", "sft_arith", "--lr=1"], "error: unexpected argument '--lr=1'"),
    (["export", "/nonexistent/run", "/tmp/out"], "error: /nonexistent/run: no such directory"),
])
def test_bad_input_gives_one_line_error(capsys, argv, message):
  code, out, err = _run_cli(capsys, *argv)
  assert code == 2 and not out
  assert err.startswith(message) and err.count("\n") == 1
  if "known: " in message:
    assert err.rstrip().endswith(f"(known: {', '.join(sorted(_experiment_files()))})")


def test_run_help_lists_every_key_with_its_default(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _run_cli(capsys, "run", "sft_arith", "--help")
  out = capsys.readouterr().out
  assert exit_info.value.code == 0
  assert "  --config.batch_size=16" in out and "  --config.optimizer.warmup_steps=60" in out
  assert "  --config.restart=False" in out


def test_run_delegates_overrides_to_the_experiment_command_line(capsys):
  # A bad override is refused by the experiment's own parser before anything heavy runs.
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["run", "sft_arith", "--workdir", "/tmp/unused", "--config.train.total_step=3"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == ("error: unknown config key --config.train.total_step; did you mean "
                                     "--config.train.total_steps?\n")


def test_console_entry_point_runs_as_a_module():
  result = subprocess.run([sys.executable, "-m", "jaxpost.cli", "config", "nope"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2 and result.stderr.startswith("error: unknown experiment 'nope'")


# ----------------------------------------------------------------------------------------------- export


def _logits(model, tokens):
  return np.asarray(model(tokens, positions=np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape),
                          segment_ids=np.ones_like(tokens)))


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A workdir whose newest checkpoint (written sharded over 8 fake devices) holds the seed-1 model, and whose
  hf/ holds a different (seed-0) model of the same architecture plus a tokenizer file."""
  workdir = str(tmp_path_factory.mktemp("run"))
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), CheckpointConfig(async_save=False))
  models = {}
  for step, seed in ((1, 2), (2, 1)):  # the older checkpoint holds another model: the newest must be exported
    graphdef, params = split_model(Decoder(TINY, rngs=nnx.Rngs(seed)))
    params = jax.device_put(params, param_shardings(params, mesh))
    checkpointer.save(step, create_train_state(params, optimizer=OptimizerConfig(), mesh=mesh), {"data": {}})
    models[step] = nnx.merge(graphdef, jax.device_get(params))  # on the host: logits computed unsharded
  checkpointer.wait()
  checkpointer.close()
  save_pretrained(Decoder(TINY, rngs=nnx.Rngs(0)), os.path.join(workdir, "hf"))
  with open(os.path.join(workdir, "hf", "tokenizer.json"), "w") as f:
    f.write('{"fake": "tokenizer"}')
  return workdir, models[2]


def test_export_of_a_workdir_reproduces_the_newest_checkpoints_logits(trained_workdir, tmp_path, capsys):
  workdir, trained = trained_workdir
  out = str(tmp_path / "exported")
  code, stdout, err = _run_cli(capsys, "export", workdir, out)
  assert code == 0, err
  assert stdout.startswith(f"exported step 2 of {workdir}/checkpoints")
  tokens = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 12)).astype(np.int32)
  exported = from_pretrained(out)
  np.testing.assert_array_equal(_logits(exported, tokens), _logits(trained, tokens))
  assert not np.allclose(_logits(from_pretrained(os.path.join(workdir, "hf")), tokens), _logits(trained, tokens))
  assert open(os.path.join(out, "tokenizer.json")).read() == '{"fake": "tokenizer"}'

  # Re-exporting the exported HF directory is the identity.
  again = str(tmp_path / "again")
  assert cli.main(["export", out, again]) == 0
  np.testing.assert_array_equal(_logits(from_pretrained(again), tokens), _logits(trained, tokens))


def test_export_finds_the_architecture_from_model_flag_or_start_checkpoint(trained_workdir, tmp_path, capsys):
  workdir, trained = trained_workdir
  bare = str(tmp_path / "bare")  # a workdir without hf/: needs --model, or the config's starting checkpoint
  shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(bare, "checkpoints"))
  code, _, err = _run_cli(capsys, "export", bare, str(tmp_path / "x"))
  assert code == 2 and "cannot tell the model architecture" in err and "--model" in err

  tokens = np.arange(10, dtype=np.int32)[None]
  assert cli.main(["export", os.path.join(bare, "checkpoints"), str(tmp_path / "a"), "--model",
                   os.path.join(workdir, "hf")]) == 0
  np.testing.assert_array_equal(_logits(from_pretrained(str(tmp_path / "a")), tokens), _logits(trained, tokens))

  with open(os.path.join(bare, "config.json"), "w") as f:
    json.dump({"checkpoint": os.path.join(workdir, "hf"), "seed": 0}, f)
  assert cli.main(["export", bare, str(tmp_path / "b")]) == 0
  np.testing.assert_array_equal(_logits(from_pretrained(str(tmp_path / "b")), tokens), _logits(trained, tokens))


def test_export_with_the_wrong_architecture_names_the_parameter(trained_workdir, tmp_path, capsys):
  workdir, _ = trained_workdir
  code, _, err = _run_cli(capsys, "export", workdir, str(tmp_path / "x"), "--model", "tiny")
  assert code == 2 and err.count("\n") == 1
  tiny = presets.get("tiny")
  assert (f"parameter embed/embedding is ({TINY.vocab_size}, {TINY.hidden_size}), the model config implies "
          f"({tiny.vocab_size}, {tiny.hidden_size})") in err
  code, _, err = _run_cli(capsys, "export", workdir, str(tmp_path / "x"), "--model", "tinyy")
  assert code == 2 and "neither a directory nor a preset" in err
