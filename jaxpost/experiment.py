"""The experiment command line: `python -m experiments.NAME --workdir DIR --config.KEY=VALUE ...`.

An experiment module defines `get_config() -> ml_collections.ConfigDict` and `main(config, workdir)`, and ends with
`if __name__ == "__main__": run_experiment(get_config, main)`. Overrides use dotted keys (`--config.optimizer.
learning_rate=3e-4` or `--config.optimizer.learning_rate 3e-4`); each value is parsed to the type of the field it
replaces, and an unknown key is refused with the closest valid one suggested. Running the same command on the same
workdir resumes (the trainer restores the newest checkpoint there); the config used is kept in workdir/config.json.
`--config.restart=true` starts over, keeping the workdir's previous contents under workdir/restarted-<time>.
"""

import ast
import difflib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from jaxpost.errors import ANTICIPATED, one_line
from jaxpost.files import read_json, write_text_atomic
from jaxpost.train.distributed import DistributedConfig, initialize_distributed

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(_flat_keys(value, f"{prefix}{key}."))
  return keys


def _parse_value(key: str, text: str, field_type: type) -> Any:
  """`text` as a `field_type` value (any Python literal, or the raw string, when the field is None)."""
  try:
    if field_type is bool:
      if text.lower() not in _TRUE + _FALSE:
        raise ValueError
      return text.lower() in _TRUE
    if field_type in (int, float, str):
      return field_type(text)
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if field_type is type(None):
      return text
    raise ValueError(f"--config.{key}: cannot parse {text!r} as {field_type.__name__}") from None
  if field_type in (tuple, list) and isinstance(value, (tuple, list)):
    return field_type(value)
  if field_type is not type(None) and not isinstance(value, field_type):
    raise ValueError(f"--config.{key}: {text!r} is not a {field_type.__name__}")
  return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets the dotted `key` of `config` from the command-line string `text`."""
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents + [leaf]):
    is_group = isinstance(node, ml_collections.ConfigDict)
    if not is_group or part not in node:
      close = difflib.get_close_matches(key, _flat_keys(config), n=1)
      hint = f"; did you mean --config.{close[0]}?" if close else ""
      raise ValueError(f"unknown config key --config.{key}{hint}")
    if i < len(parents):
      node = node[part]
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ValueError(f"--config.{key} is a group of settings; set its fields, e.g. --config.{key}.NAME=VALUE")
  node[leaf] = _parse_value(key, text, node.get_type(leaf))


def config_help(config: ml_collections.ConfigDict) -> str:
  """Every settable key with its current value, one `--config.KEY=VALUE` per line (what `--help` prints)."""
  lines = []
  for key in _flat_keys(config):
    node = config
    for part in key.split("."):
      node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
      lines.append(f"  --config.{key}={node!r}")
  return "\n".join(lines)


def parse_args(argv: Sequence[str], config: ml_collections.ConfigDict, *, require_workdir: bool = True) -> str | None:
  """Applies the `--config.KEY=VALUE` or `--config.KEY VALUE` overrides in `argv` to `config` and returns the
  `--workdir` (None when it is not required and not given)."""
  workdir, args = None, list(argv)
  while args:
    arg = args.pop(0)
    name, has_value, value = arg.partition("=")
    if name not in ("--workdir",) and not name.startswith("--config."):
      raise ValueError(f"unexpected argument {arg!r}; usage: --workdir DIR [--config.KEY=VALUE ...] (--help lists "
                       f"the keys)")
    if not has_value:
      if not args:
        raise ValueError(f"{name} needs a value")
      value = args.pop(0)
    if name == "--workdir":
      workdir = value
    else:
      apply_override(config, name[len("--config."):], value)
  if workdir is None and require_workdir:
    raise ValueError("--workdir DIR is required (a new directory, or an existing one to resume)")
  return workdir


def _config_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json()), indent=2) + "\n"


def _has_progress(workdir: str) -> bool:
  """Whether `workdir` holds a finished checkpoint: a run there got past its start."""
  checkpoints = os.path.join(workdir, "checkpoints")
  return os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))


def restart_aside(workdir: str) -> str | None:
  """Moves everything in `workdir` (checkpoints, metrics, exports) into `workdir/restarted-<time>`, so a run can
  start over without losing its history; returns that directory (None when there was nothing to move)."""
  names = [n for n in os.listdir(workdir) if not n.startswith("restarted-")] if os.path.isdir(workdir) else []
  if not names:
    return None
  aside = os.path.join(workdir, f"restarted-{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(aside)
  for name in names:
    os.replace(os.path.join(workdir, name), os.path.join(aside, name))
  return aside


def _start(config: ml_collections.ConfigDict, workdir: str, restart: bool) -> tuple[bool, bool]:
  """Prepares `workdir` on process 0: restarts it if asked, warns when resuming it with another config, and writes
  config.json for a new workdir. Returns (whether config.json was written now, whether it is still to be written
  after the run succeeds)."""
  if restart:
    aside = restart_aside(workdir)
    if aside:
      print(f"restarting: the previous contents of {workdir} are kept in {aside}", file=sys.stderr)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    if read_json(path) != json.loads(config.to_json()):
      warnings.warn(f"{path}: this workdir was started with a different config; continuing with the new one "
                    f"(written there once this run succeeds)")
      return False, True
    return False, False
  os.makedirs(workdir, exist_ok=True)
  write_text_atomic(path, _config_json(config))
  return True, False


def run_experiment(get_config: Callable[[], ml_collections.ConfigDict],
                   main: Callable[[ml_collections.ConfigDict, str], Any], argv: Sequence[str] | None = None) -> Any:
  """Parses the command line (default `sys.argv[1:]`), records the config and calls `main(config, workdir)`.

  Every experiment takes `--config.restart=true`, which moves the workdir's contents aside (see `restart_aside`)
  and starts over, and `--config.distributed.{coordinator,num_processes,process_id}` for a multi-process launch
  (see `jaxpost.train.distributed`). A bad command line exits with a one-line error on stderr (status 2); so does
  an anticipated failure in `main` (a refused value or file, a non-finite loss, a missing or unwritable file:
  status 1), unless JAXPOST_TRACEBACK=1 asks for the traceback. A failed run leaves a workdir's existing files as
  they were; a new workdir it created keeps no config.json unless a checkpoint was written.
  """
  config = get_config()
  with config.unlocked():
    config.restart = False
    config.distributed = ml_collections.ConfigDict(dict(coordinator=None, num_processes=None, process_id=None))
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--help" in argv or "-h" in argv:
    print(f"usage: --workdir DIR [--config.KEY=VALUE ...]; the keys and their defaults:\n{config_help(config)}")
    raise SystemExit(0)
  try:
    workdir = parse_args(argv, config)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2) from None
  restart, distributed = config.restart, config.distributed.to_dict()
  with config.unlocked():
    del config["restart"], config["distributed"]
  try:
    initialize_distributed(DistributedConfig(**distributed))
    created, write_config_after = _start(config, workdir, restart) if jax.process_index() == 0 else (False, False)
    try:
      result = main(config, workdir)
    except ANTICIPATED:
      if created and not _has_progress(workdir):
        os.remove(os.path.join(workdir, "config.json"))  # nothing ran: the next attempt starts clean
      raise
    if write_config_after:
      write_text_atomic(os.path.join(workdir, "config.json"), _config_json(config))
    return result
  except ANTICIPATED as error:
    if os.environ.get("JAXPOST_TRACEBACK") == "1":
      raise
    print(one_line(error), file=sys.stderr)
    raise SystemExit(1) from None
