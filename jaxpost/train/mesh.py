"""The device mesh: axes ("data", "fsdp", "tensor") sized from a config (multi-host start-up: `distributed.py`)."""

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  """Sizes of the mesh axes; one of them may be -1, meaning all devices left over (default: everything on fsdp)."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1

  def __post_init__(self):
    sizes = dataclasses.asdict(self)
    for name, size in sizes.items():
      if size != -1 and size < 1:
        raise ValueError(f"MeshConfig.{name} must be >= 1 or -1 (the rest of the devices), got {size}")
    if list(sizes.values()).count(-1) > 1:
      raise ValueError(f"MeshConfig: at most one axis may be -1, got {sizes}")

  def axis_sizes(self, num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes for `num_devices` devices, with -1 resolved."""
    sizes = [self.data, self.fsdp, self.tensor]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % fixed:
        raise ValueError(f"MeshConfig {sizes}: {num_devices} devices are not divisible by the fixed axes' {fixed}")
      sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
      raise ValueError(f"MeshConfig {sizes} needs {fixed} devices, but {num_devices} are given")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all devices) with axes ("data", "fsdp", "tensor")."""
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.axis_sizes(len(devices))
  if devices == list(jax.devices()):
    # Topology-aware order: `tensor` (the innermost axis) lands on the best-connected devices.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
