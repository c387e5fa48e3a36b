"""Multi-host start-up: one identical process per host, connected by `jax.distributed` before any device is used.

Where the settings come from, first match wins: an explicit `DistributedConfig` (the experiments'
`--config.distributed.coordinator=HOST:PORT --config.distributed.num_processes=N --config.distributed.process_id=I`),
then the environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, then jax's own
detection of TPU pods, SLURM and Open MPI. A single process (one machine, any number of local accelerators) needs
none of it. A process that cannot reach the coordinator within `timeout_s` stops with a one-line error.
"""

import dataclasses
import os
import socket
import sys
import time

import jax

from jaxpost.errors import JaxpostError

# Environment variables whose presence (with more than one process) marks a launcher jax detects by itself.
_DETECTED_LAUNCHERS = {"SLURM": "SLURM_NTASKS", "Open MPI": "OMPI_COMM_WORLD_SIZE"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
  """The coordinator ("host:port" of process 0), the process count and this process's index; None: from the
  environment. `local_device_ids` restricts this process to some local devices (one process per GPU)."""

  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  timeout_s: float = 300.0

  def __post_init__(self):
    if self.num_processes is not None and self.num_processes < 1:
      raise JaxpostError(f"distributed.num_processes must be >= 1, got {self.num_processes}")
    if self.process_id is not None and self.num_processes is not None and \
        not 0 <= self.process_id < self.num_processes:
      raise JaxpostError(f"distributed.process_id must be in [0, num_processes={self.num_processes}), got "
                         f"{self.process_id}")
    if self.timeout_s <= 0:
      raise JaxpostError(f"distributed.timeout_s must be > 0, got {self.timeout_s}")


def resolve(cfg: DistributedConfig = DistributedConfig()) -> tuple[str, DistributedConfig | None]:
  """(where the settings came from, the explicit settings to pass to jax or None for jax's own detection);
  ("single process", None) when this is not a multi-process launch."""
  env = os.environ
  explicit = DistributedConfig(
      coordinator=cfg.coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None,
      num_processes=cfg.num_processes if cfg.num_processes is not None else _env_int("JAX_NUM_PROCESSES"),
      process_id=cfg.process_id if cfg.process_id is not None else _env_int("JAX_PROCESS_ID"),
      local_device_ids=cfg.local_device_ids, timeout_s=cfg.timeout_s)
  given = [explicit.coordinator, explicit.num_processes, explicit.process_id]
  if any(v is not None for v in given):
    if any(v is None for v in given):
      names = ("coordinator (JAX_COORDINATOR_ADDRESS)", "num_processes (JAX_NUM_PROCESSES)",
               "process_id (JAX_PROCESS_ID)")
      missing = [n for n, v in zip(names, given) if v is None]
      raise JaxpostError(f"distributed: {', '.join(missing)} not set; a multi-process launch needs all three")
    source = "config" if any(v is not None for v in (cfg.coordinator, cfg.num_processes, cfg.process_id)) else \
        "JAX_* environment variables"
    return source, explicit
  for launcher, variable in _DETECTED_LAUNCHERS.items():
    if _env_int(variable, 1) > 1:
      return launcher, None
  if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    return "TPU pod", None
  return "single process", None


def initialize_distributed(cfg: DistributedConfig = DistributedConfig()) -> bool:
  """Connects this process to the others (see the module docstring) once; returns whether this is a multi-process
  run. Prints one line per process: its index and count, local and global devices."""
  if jax.distributed.is_initialized():
    return True
  source, explicit = resolve(cfg)
  if source == "single process" or (explicit is not None and explicit.num_processes == 1):
    return False
  if explicit is None:
    jax.distributed.initialize()
  else:
    if explicit.process_id != 0:
      _wait_for(explicit.coordinator, explicit.timeout_s)
    jax.distributed.initialize(coordinator_address=explicit.coordinator, num_processes=explicit.num_processes,
                               process_id=explicit.process_id, local_device_ids=explicit.local_device_ids,
                               initialization_timeout=int(explicit.timeout_s))
  print(f"process {jax.process_index()} of {jax.process_count()} ({source}): {jax.local_device_count()} local "
        f"devices of {jax.device_count()}", file=sys.stderr)
  return True


def _wait_for(coordinator: str, timeout_s: float) -> None:
  """Waits until the coordinator accepts TCP connections; a one-line error naming it after `timeout_s`."""
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise JaxpostError(f"distributed.coordinator must be HOST:PORT, got {coordinator!r}")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
        return
    except OSError as error:
      if time.monotonic() >= deadline:
        raise JaxpostError(f"distributed: coordinator {coordinator} (JAX_COORDINATOR_ADDRESS or "
                           f"--config.distributed.coordinator) not reachable within {timeout_s:g}s "
                           f"({error.strerror or error}); is process 0 running?") from None
      time.sleep(0.5)


def _env_int(name: str, default: int | None = None) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return default
  try:
    return int(value)
  except ValueError:
    raise JaxpostError(f"environment variable {name}={value!r} is not an integer") from None
