"""The device mesh: axes ("data", "fsdp", "tensor") sized from a config, and multi-host start-up.

Multi-host runs (a TPU pod slice, several GPU machines) start one identical process per host;
`initialize_distributed()` connects them before any device is touched. On a TPU pod, run the same command on every
worker (`gcloud compute tpus tpu-vm ssh NAME --worker=all --command="python -m experiments.X --workdir gs://..."`):
JAX detects the pod by itself. On GPU clusters run one process per host under SLURM or Open MPI (detected), or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on each. One multi-GPU machine needs nothing: a single
process sees all its GPUs.
"""

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")

# Environment variables whose presence (with more than one process) marks a multi-process launch.
_MULTI_PROCESS_ENV = {
    "JAX_NUM_PROCESSES": "JAX_NUM_PROCESSES",
    "SLURM": "SLURM_NTASKS",
    "Open MPI": "OMPI_COMM_WORLD_SIZE",
}


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


def _multi_process_launcher() -> str | None:
  """The name of the launcher that started this process as one of several, or None for a single process."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  for launcher, variable in _MULTI_PROCESS_ENV.items():
    if int(os.environ.get(variable, "1")) > 1:
      return launcher
  if len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    return "TPU pod"
  return None


def initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` once when this is a multi-process launch; returns whether it did.

  Must run before any other JAX call that touches devices. Single-process runs are left alone.
  """
  if jax.distributed.is_initialized() or _multi_process_launcher() is None:
    return False
  jax.distributed.initialize()
  return True
