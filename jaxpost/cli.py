"""The `jaxpost` command: list the experiments, run one, print its config, export a checkpoint to HF format.

  jaxpost list
  jaxpost run sft_arith --workdir runs/sft --config.train.total_steps=100
  jaxpost config sft_arith --config.task=medium
  jaxpost export runs/sft runs/sft_hf [--model PRESET_OR_HF_DIR]

`export` reads either a Hugging Face checkpoint directory (re-exported as is) or a training workdir (or its
`checkpoints/` directory), whose newest Orbax checkpoint holds the parameters but not the model's architecture.
The architecture comes from, in order: `--model` (a preset name or a HF directory), the workdir's own `hf/`
export, or the HF directory the run started from (`"checkpoint"` in workdir/config.json).

jax and the library are imported inside the commands that need them, so `list` and command-line errors are instant.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import os
import pkgutil
import shutil
import sys
from collections.abc import Sequence

# Files of a Hugging Face directory that `export` carries over besides the weights and config.json.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class CLIError(ValueError):
  """A bad command line or input path; printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------- experiments


def experiments() -> dict[str, str]:
  """Runnable experiments (modules of the `experiments` package with get_config and main) -> the first paragraph
  of their docstring. Read from the source: listing imports nothing heavy, and a broken module hides no other."""
  package = importlib.import_module("experiments")
  found = {}
  for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
    path = os.path.join(info.module_finder.path, f"{info.name}.py")
    if info.ispkg or not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    if {"get_config", "main"} <= functions:
      found[info.name] = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
  return found


def _experiment_module(name: str):
  known = experiments()
  if name not in known:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CLIError(f"unknown experiment {name!r}{hint} (known: {', '.join(known)})")
  return importlib.import_module(f"experiments.{name}")


def _list(args: argparse.Namespace) -> None:
  known = experiments()
  width = max(map(len, known), default=0)
  for name, summary in known.items():
    print(f"{name:<{width}}  {summary}")


def _run(args: argparse.Namespace) -> None:
  module = _experiment_module(args.name)
  from jaxpost.experiment import run_experiment
  run_experiment(module.get_config, module.main, args.overrides)


def _config(args: argparse.Namespace) -> None:
  config = _experiment_module(args.name).get_config()
  from jaxpost.experiment import parse_args
  try:  # the same spellings as `run` (KEY=VALUE or KEY VALUE); a --workdir is accepted and ignored
    parse_args(args.overrides, config, require_workdir=False)
  except ValueError as error:
    raise CLIError(str(error)) from None
  print(config.to_json(indent=2))


# ----------------------------------------------------------------------------------------------- export


def _architecture_source(workdir: str, model: str | None) -> str:
  """The preset name or HF directory that describes the architecture of the model trained in `workdir`."""
  from jaxpost.files import read_json
  from jaxpost.models.hf_io import is_hf_checkpoint
  if model is not None:
    return model
  if is_hf_checkpoint(os.path.join(workdir, "hf")):
    return os.path.join(workdir, "hf")
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    start = read_json(config_path).get("checkpoint")
    if isinstance(start, str) and is_hf_checkpoint(start):
      return start
  raise CLIError(f"{workdir}: cannot tell the model architecture (no hf/ export, no HF 'checkpoint' in "
                 f"config.json); pass --model PRESET_OR_HF_DIR")


def _model_config(source: str):
  from jaxpost.files import read_json
  from jaxpost.models import config_from_hf, presets
  if os.path.isdir(source):
    config_path = os.path.join(source, "config.json")
    if not os.path.exists(config_path):
      raise CLIError(f"--model {source}: no config.json in that directory")
    return config_from_hf(read_json(config_path), source=config_path)
  if source not in presets.names():
    raise CLIError(f"--model {source!r} is neither a directory nor a preset (presets: {', '.join(presets.names())})")
  return presets.get(source)


def restore_params(checkpoints: str, model_cfg):
  """The model (`Decoder(model_cfg)`) with the params of the newest Orbax checkpoint under `checkpoints`, restored
  onto one device whatever mesh wrote them; the optimizer state is not read."""
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx

  from jaxpost.models import Decoder
  from jaxpost.train import path_str, split_model

  steps = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit()
                 and os.path.exists(os.path.join(checkpoints, name, "commit_success.txt")))
  if not steps:
    raise CLIError(f"{checkpoints}: no complete checkpoint")
  path = os.path.join(checkpoints, str(steps[-1]), "state")
  graphdef, shapes = split_model(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))))
  flat_shapes = lambda tree: {path_str(key_path).removesuffix("/value"): tuple(leaf.shape)
                               for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  saved = flat_shapes(ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree["params"])
  for name, shape in flat_shapes(shapes).items():
    if saved.get(name) != shape:
      raise CLIError(f"{path}: parameter {name} is {saved.get(name, 'missing')}, the model config implies {shape}; "
                     f"pass the right --model")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {"params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)}
  restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  return nnx.merge(graphdef, restored["params"]), steps[-1]


def export(source: str, out: str, *, model: str | None = None) -> str:
  """Writes the model at `source` (HF dir, training workdir or its checkpoints/ dir) as a HF checkpoint in `out`,
  with the tokenizer files of the architecture's HF directory when it has them. Returns a one-line summary."""
  from jaxpost.errors import CheckpointError
  from jaxpost.models import from_pretrained, save_pretrained
  from jaxpost.models.hf_io import is_hf_checkpoint
  if not os.path.isdir(source):
    raise CLIError(f"{source}: no such directory")
  if is_hf_checkpoint(source):
    try:
      decoder = from_pretrained(source)
    except CheckpointError as error:
      raise CLIError(str(error)) from None
    extras, what = source, f"HF checkpoint {source}"
  else:
    checkpoints = source if os.path.basename(os.path.normpath(source)) == "checkpoints" else \
        os.path.join(source, "checkpoints")
    if not os.path.isdir(checkpoints):
      raise CLIError(f"{source}: neither a HF checkpoint (config.json + safetensors) nor a workdir with checkpoints/")
    workdir = os.path.dirname(os.path.abspath(checkpoints))
    extras = _architecture_source(workdir, model)
    decoder, step = restore_params(checkpoints, _model_config(extras))
    what = f"step {step} of {checkpoints} (architecture from {extras})"
  save_pretrained(decoder, out)
  if os.path.isdir(extras):
    for name in _TOKENIZER_FILES:
      if os.path.exists(os.path.join(extras, name)) and os.path.abspath(extras) != os.path.abspath(out):
        shutil.copy(os.path.join(extras, name), os.path.join(out, name))
  return f"exported {what} to {out}"


def _export(args: argparse.Namespace) -> None:
  print(export(args.source, args.out, model=args.model))


# ----------------------------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxpost", description="jaxpost experiments and checkpoints.")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  commands.add_parser("list", help="list the experiments").set_defaults(handler=_list)
  run = commands.add_parser("run", help="run an experiment: jaxpost run NAME --workdir DIR [--config.KEY=VALUE ...]")
  config = commands.add_parser("config", help="print an experiment's config with overrides applied")
  for sub, handler in ((run, _run), (config, _config)):
    sub.add_argument("name", help="experiment name (see `jaxpost list`)")
    sub.add_argument("overrides", nargs=argparse.REMAINDER,
                     help="--workdir DIR and --config.KEY=VALUE overrides (`jaxpost run NAME --help` lists the keys)")
    sub.set_defaults(handler=handler)
  export_cmd = commands.add_parser("export", help="export a workdir's newest checkpoint (or a HF dir) to HF format")
  export_cmd.add_argument("source", help="training workdir, its checkpoints/ directory, or a HF checkpoint directory")
  export_cmd.add_argument("out", help="output directory for config.json + safetensors")
  export_cmd.add_argument("--model", help="preset name or HF directory giving the architecture of a workdir's model")
  export_cmd.set_defaults(handler=_export)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; a bad command line or input prints one `error: ...` line on stderr and returns 2, any other
  anticipated failure (a refused checkpoint, an unwritable output) one line and 1, unless JAXPOST_TRACEBACK=1."""
  from jaxpost.errors import ANTICIPATED, one_line
  args = _parser().parse_args(argv)
  try:
    args.handler(args)
  except CLIError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except ANTICIPATED as error:
    if os.environ.get("JAXPOST_TRACEBACK") == "1":
      raise
    print(one_line(error), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
