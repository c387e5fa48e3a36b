"""Mesh sizes from config, partition rules (incl. the replication fallback) and multi-process detection."""

import socket
import time

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxpost.errors import JaxpostError
from jaxpost.train import MeshConfig, batch_sharding, initialize_distributed, make_mesh, spec_for
from jaxpost.train.distributed import DistributedConfig, resolve


def test_mesh_config_resolves_the_rest_of_the_devices():
  assert MeshConfig().axis_sizes(8) == (1, 8, 1)
  assert MeshConfig(data=2).axis_sizes(8) == (2, 4, 1)
  assert MeshConfig(data=-1, fsdp=2, tensor=2).axis_sizes(8) == (2, 2, 2)
  assert MeshConfig(data=2, fsdp=2, tensor=2).axis_sizes(8) == (2, 2, 2)


@pytest.mark.parametrize("kwargs, devices, message", [
    (dict(data=-1, fsdp=-1), 8, "at most one axis"),
    (dict(tensor=0), 8, "MeshConfig.tensor"),
    (dict(tensor=3), 8, "not divisible"),
    (dict(data=2, fsdp=2, tensor=1), 8, "needs 4 devices"),
])
def test_mesh_config_errors(kwargs, devices, message):
  with pytest.raises(ValueError, match=message):
    MeshConfig(**kwargs).axis_sizes(devices)


def test_make_mesh_on_all_and_on_some_devices():
  mesh = make_mesh(MeshConfig(data=2, tensor=2))
  assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  small = make_mesh(MeshConfig(), devices=jax.devices()[4:8])
  assert dict(small.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
  assert set(small.devices.flat) == set(jax.devices()[4:8])


def test_rules_shard_heads_and_mlp_over_tensor_and_the_large_dim_over_fsdp():
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  expected = {
      "embed/embedding": ((64, 32), P(("fsdp", "tensor"), None)),
      "lm_head/weight": ((64, 32), P("tensor", "fsdp")),
      "layers/0/attn/q_proj/weight": ((64, 32), P("tensor", "fsdp")),
      "layers/0/attn/k_proj/bias": ((16,), P("tensor")),
      "layers/11/attn/o_proj/weight": ((32, 64), P("fsdp", "tensor")),
      "layers/1/mlp/up_proj/weight": ((128, 32), P("tensor", "fsdp")),
      "layers/1/mlp/down_proj/weight": ((32, 128), P("fsdp", "tensor")),
      "layers/1/attn/q_norm/scale": ((8,), P()),
      "final_norm/scale": ((32,), P()),
      "some/new/adapter": ((32, 4), P()),  # unmatched: replicated
      "0/mu/layers/2/mlp/gate_proj/weight": ((128, 32), P("tensor", "fsdp")),  # Adam moment follows its param
      "0/count": ((), P()),
  }
  for path, (shape, spec) in expected.items():
    assert spec_for(path, shape, mesh) == spec, path


def test_indivisible_dimension_falls_back_to_replication():
  mesh = make_mesh(MeshConfig(fsdp=2, tensor=4))
  # 2 KV heads x 8 = 16 output rows do divide by 4; 6 rows (e.g. 3 heads x 2) do not.
  assert spec_for("layers/0/attn/k_proj/weight", (16, 32), mesh) == P("tensor", "fsdp")
  assert spec_for("layers/0/attn/k_proj/weight", (6, 32), mesh) == P(None, "fsdp")
  assert spec_for("embed/embedding", (10, 32), mesh) == P(None, None)
  assert spec_for("embed/embedding", (16, 32), mesh) == P(("fsdp", "tensor"), None)
  with pytest.raises(ValueError, match="has 2 dims"):
    spec_for("layers/0/mlp/up_proj/weight", (32,), mesh)


def test_batch_is_sharded_over_data_and_fsdp():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  x = jax.device_put(jax.numpy.zeros((8, 3)), batch_sharding(mesh))
  assert {s.data.shape for s in x.addressable_shards} == {(2, 3)}  # 8 rows over 2x2, replicated over tensor


def test_multi_process_settings_resolve_config_then_environment_then_detection(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
               "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert resolve() == ("single process", None) and initialize_distributed() is False
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert resolve()[0] == "single process"
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
  assert resolve() == ("TPU pod", None)
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
  assert resolve() == ("Open MPI", None)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  source, settings = resolve()
  assert source == "JAX_* environment variables"
  assert (settings.coordinator, settings.num_processes, settings.process_id) == ("10.0.0.1:1234", 2, 1)
  source, settings = resolve(DistributedConfig(process_id=0))
  assert source == "config" and settings.process_id == 0 and settings.num_processes == 2
  monkeypatch.delenv("JAX_PROCESS_ID")
  with pytest.raises(JaxpostError, match=r"process_id \(JAX_PROCESS_ID\) not set"):
    resolve()


def test_an_unreachable_coordinator_is_a_one_line_error_not_a_hang(monkeypatch):
  with socket.socket() as s:  # a port nobody listens on: bind, then close
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.monotonic()
  with pytest.raises(JaxpostError, match=rf"coordinator 127.0.0.1:{port} .* not reachable within 1s"):
    initialize_distributed(DistributedConfig(coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=1,
                                             timeout_s=1.0))
  assert time.monotonic() - start < 10
