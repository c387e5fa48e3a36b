"""benchmarks/pod_memory: an ahead-of-time compile for a TPU topology on this CPU host reports per-chip bytes."""

import json

import pytest

pytest.importorskip("libtpu", reason="needs the optional 'tpu-aot' extra: pip install -e '.[tpu-aot]'")

from benchmarks import pod_memory  # noqa: E402  (after the skip: it needs libtpu)

FIELDS = ("program", "model", "topology", "mesh", "seq", "batch", "argument_bytes", "temp_bytes", "total_bytes",
          "hbm_bytes", "fits", "flops", "analytic_flops", "flops_ratio", "compile_s")


def test_sft_step_fits_a_v5p_8_and_reports_per_chip_bytes(capsys):
  """The bench model's SFT step (1 sequence x 256 tokens per chip) on v5p-8, with jax already running on CPU."""
  rows = pod_memory.main(["--program", "sft", "--model", "bench", "--topology", "v5p:2x2x2", "--seq", "256",
                          "--json"])
  assert len(rows) == 1
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert row == json.loads(json.dumps(rows[0]))
  assert set(FIELDS) <= set(row)
  assert (row["program"], row["model"], row["topology"], row["seq"], row["batch"]) == ("sft", "bench", "v5p:2x2x2",
                                                                                       256, 8)
  assert row["fits"] is True
  assert 0 < row["argument_bytes"] <= row["total_bytes"] < row["hbm_bytes"]
  assert row["hbm_bytes"] == int(95.74 * 2**30)
  assert row["flops"] > 0 and 0.5 < row["flops_ratio"] < 3


def test_overflow_message_gives_the_bytes_needed():
  """An HBM overflow's message is read for what the program needed; arguments come from their shardings."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = pod_memory.tpu_mesh("v5p:2x2x2", "1,-1,1")
  arg = jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
             "(415.30G) exceeds available HBM (95.74G).")
  stats = pod_memory.overflow_stats(message, (arg,))
  assert stats["argument_bytes"] == 1024 * 4
  assert stats["temp_bytes"] == int(415.30 * 2**30)
  assert stats["total_bytes"] == stats["argument_bytes"] + stats["temp_bytes"]
  assert pod_memory.overflow_stats("Used 230.51G of 95.74G hbm.", (arg,))["total_bytes"] == int(230.51 * 2**30)
