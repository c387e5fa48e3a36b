"""Orbax checkpoints of (TrainState, data position): periodic async saves, keep-last-K, resume from the newest.

Orbax writes each checkpoint into a temporary directory and renames it (or writes `commit_success.txt`) only when
complete, so a write cut short by a crash is never listed as a step. A listed checkpoint that still fails to
restore (truncated files, disk errors) is reported with a warning, moved aside as `corrupt-<step>` and the next
older one is used. A checkpoint that reads fine but holds other arrays than the target (another model or
optimizer) is an error, and stays where it is. Restoring takes target shardings, so a run may resume on a different
mesh.
"""

import dataclasses
import os
import time
import warnings

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from jaxpost.models import save_pretrained
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
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether `step` is on the save interval."""
    return step % self.cfg.save_every == 0

  def save(self, step: int, state: TrainState, data_position: dict) -> None:
    """Starts writing a checkpoint of `state` (after `step` updates); returns once arrays are copied off-device."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position))
    self._manager.save(step, args=args, force=True)

  def restore_latest(self, target) -> tuple[TrainState, dict] | None:
    """(state, data position) of the newest checkpoint that restores cleanly onto `target` (see
    `abstract_state`), or None when there is none. Unreadable newer checkpoints are warned about and moved aside;
    one that holds other arrays than `target` raises ValueError."""
    for step in reversed(self.steps()):
      difference = self._difference(step, target)
      if difference:
        raise ValueError(f"checkpoint {self.directory}/{step} was written for another model or optimizer "
                         f"({difference}); resume with the config that wrote it, or use a new directory")
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
      except Exception as error:  # Orbax raises many types for damaged files; any of them means "unusable".
        warnings.warn(f"checkpoint {self.directory}/{step} could not be restored ({type(error).__name__}: "
                      f"{str(error)[:200]}); moving it to corrupt-{step} and trying the previous one")
        self._set_aside(step)
        continue
      return restored.state, restored.data
    return None

  def _difference(self, step: int, target) -> str | None:
    """The first array that checkpoint `step` and `target` do not share, or share with another shape; None when
    they match or the metadata cannot be read (the restore then reports the damage)."""
    try:
      stored = ocp.tree.to_flat_dict(self._manager.item_metadata(step)["state"].tree)
    except Exception:  # damaged metadata: the same "unusable" as in restore_latest
      return None
    wanted = ocp.tree.to_flat_dict(target)
    for key in list(wanted) + [key for key in stored if key not in wanted]:  # in the state's order: params first
      name = "/".join(k for k in key if k != "value")
      if key not in wanted:
        return f"it holds {name}, which this state does not have"
      if key not in stored:
        return f"it has no {name}"
      if tuple(stored[key].shape) != tuple(wanted[key].shape):
        return f"{name} is {tuple(stored[key].shape)} there, {tuple(wanted[key].shape)} here"
    return None

  def _set_aside(self, step: int) -> None:
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


def export_hf(graphdef, params, directory: str) -> None:
  """Writes the model as a Hugging Face checkpoint (config.json + safetensors) with `jaxpost.models.save_pretrained`."""
  save_pretrained(nnx.merge(graphdef, params), directory)
