"""Orbax checkpoints of (TrainState, data position): periodic async saves, keep-last-K, resume from the newest.

Orbax writes each checkpoint into a temporary directory and renames it (or writes `commit_success.txt`) only when
complete, so a write cut short by a crash is never listed as a step. Each checkpoint also stores a checksum of
every array (`jaxpost.train.checksum`). A listed checkpoint that fails to restore (truncated files, disk errors)
or whose arrays no longer match their checksums (flipped bytes) is reported with a warning, moved aside as
`corrupt-<step>-<time>` and the next older one is used. A checkpoint that holds other arrays than the target
(another model, dtype or optimizer) is a `CheckpointError` and nothing on disk changes; so is a directory whose
every checkpoint was unusable: never a silent restart. Restoring takes target shardings, so a run may resume on a
different mesh.
"""

import dataclasses
import os
import time
import warnings

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from jaxpost.errors import CheckpointError
from jaxpost.models import save_pretrained
from jaxpost.train.checksum import mismatches, tree_checksums
from jaxpost.train.state import TrainState


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
  """`save_every` steps (and always at the last step), keeping the newest `keep`; `async_save` writes in the
  background while training continues."""

  save_every: int = 100
  keep: int = 2
  async_save: bool = True

  def __post_init__(self):
    if self.save_every < 1 or self.keep < 1:
      raise ValueError(f"CheckpointConfig: save_every and keep must be >= 1, got {self.save_every}, {self.keep}")


def abstract_state(shapes, shardings):
  """ShapeDtypeStructs carrying the target shardings: what `Checkpointer.restore_latest` restores onto."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


class Checkpointer:
  """Saves and restores the train state with the data iterator's position (a JSON dict) under `directory`."""

  def __init__(self, directory: str, cfg: CheckpointConfig):
    self.directory = os.path.abspath(directory)
    self.cfg = cfg
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save,
                                           create=True)
    # Naming each item's handler lets a fresh manager read metadata and restore without warnings.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "checksums": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether `step` is on the save interval."""
    return step % self.cfg.save_every == 0

  def save(self, step: int, state: TrainState, data_position: dict) -> None:
    """Starts writing a checkpoint of `state` (after `step` updates); returns once arrays are copied off-device."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position),
                              checksums=ocp.args.JsonSave(tree_checksums(state)))
    self._manager.save(step, args=args, force=True)

  def restore_latest(self, target) -> tuple[TrainState, dict] | None:
    """(state, data position) of the newest checkpoint that restores cleanly onto `target` (see
    `abstract_state`), or None when the directory holds none. Unreadable or corrupt newer checkpoints are warned
    about and moved aside; one written for another state, or a directory left with nothing usable, raises
    CheckpointError."""
    for step in reversed(self.steps()):
      try:
        stored = ocp.tree.to_flat_dict(self._manager.item_metadata(step)["state"].tree)
      except Exception as error:  # Orbax raises many types for damaged metadata; any of them means "unusable".
        self._set_aside(step, f"its metadata cannot be read ({type(error).__name__}: {str(error)[:200]})")
        continue
      difference = _difference(stored, ocp.tree.to_flat_dict(target))
      if difference:
        raise CheckpointError(f"checkpoint {self.directory}/{step} was written for another model or optimizer "
                              f"({difference}); resume with the config that wrote it, or use a new workdir")
      has_checksums = self._has_checksums(step)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
            **({"checksums": ocp.args.JsonRestore()} if has_checksums else {})))
      except Exception as error:
        self._set_aside(step, f"it could not be restored ({type(error).__name__}: {str(error)[:200]})")
        continue
      if has_checksums:
        bad = mismatches(restored.checksums, tree_checksums(restored.state))
        if bad:
          self._set_aside(step, f"its arrays do not match their checksums ({', '.join(bad[:3])}"
                                f"{', ...' if len(bad) > 3 else ''})")
          continue
      return restored.state, restored.data
    damaged = [name for name in os.listdir(self.directory) if name.startswith("corrupt-")]
    if damaged:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory}: {len(damaged)} damaged one(s) set aside as corrupt-*; "
          f"to start over rerun with --config.restart=true (which keeps the old checkpoints and metrics under "
          f"restarted-<time>)")
    return None

  def _has_checksums(self, step: int) -> bool:
    """Whether checkpoint `step` stores checksums (those written before they existed do not)."""
    return os.path.isdir(os.path.join(self.directory, str(step), "checksums"))

  def _set_aside(self, step: int, reason: str) -> None:
    """Warns that checkpoint `step` is unusable because of `reason` and renames it `corrupt-<step>-<time>`."""
    warnings.warn(f"checkpoint {self.directory}/{step} is unusable: {reason}; moving it to corrupt-{step}-* and "
                  f"trying the previous one")
    if jax.process_index() == 0:
      os.replace(os.path.join(self.directory, str(step)),
                 os.path.join(self.directory, f"corrupt-{step}-{int(time.time())}"))
    multihost_utils.sync_global_devices(f"jaxpost checkpoint set aside {step}")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until background writes are complete."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _difference(stored: dict, wanted: dict) -> str | None:
  """The first array that a checkpoint's flat metadata `stored` and the flat target `wanted` do not share, or
  share with another shape or dtype; None when they match."""
  for key in list(wanted) + [key for key in stored if key not in wanted]:  # in the state's order: params first
    name = "/".join(str(k) for k in key if k != "value")
    if key not in wanted:
      return f"it holds {name}, which this state does not have"
    if key not in stored:
      return f"it has no {name}"
    if tuple(stored[key].shape) != tuple(wanted[key].shape):
      return f"{name} is {tuple(stored[key].shape)} there, {tuple(wanted[key].shape)} here"
    if stored[key].dtype != wanted[key].dtype:
      return f"{name} is {stored[key].dtype} there, {wanted[key].dtype} here"
  return None


def export_hf(graphdef, params, directory: str) -> None:
  """Writes the model as a Hugging Face checkpoint (config.json + safetensors) with `jaxpost.models.save_pretrained`."""
  save_pretrained(nnx.merge(graphdef, params), directory)
