"""The compiled SFT step's temporaries grow linearly with the sequence: no [T, T] scores, no [T, V] logits."""

import jax
import jax.numpy as jnp
from flax import nnx

import jaxpost.models as jm
from jaxpost.losses import make_sft_loss
from jaxpost.train import MeshConfig, OptimizerConfig, batch_sharding, make_mesh, make_train_step, split_model
from jaxpost.train.state import train_state_shardings


def _sft_step_temp_bytes(cfg: jm.ModelConfig, seq: int) -> int:
  """Per-device temporary bytes of one compiled SFT step on batch 1 x `seq`, from shapes alone."""
  mesh = make_mesh(MeshConfig(fsdp=1), jax.devices()[:1])
  graphdef, params = split_model(nnx.eval_shape(lambda: jm.Decoder(cfg, rngs=nnx.Rngs(0))))
  optimizer = OptimizerConfig(learning_rate=1e-4, warmup_steps=1, total_steps=10)
  shapes, shardings = train_state_shardings(params, optimizer=optimizer, mesh=mesh)
  step = make_train_step(graphdef=graphdef, loss_fn=make_sft_loss(), optimizer=optimizer, mesh=mesh,
                         state_shardings=shardings)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  row = jax.ShapeDtypeStruct((1, seq), jnp.int32, sharding=batch_sharding(mesh))
  batch = {"tokens": row, "positions": row, "segment_ids": row, "loss_mask": row}
  return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes


def test_sft_step_temporaries_grow_at_most_linearly_with_the_sequence():
  # qwen3-0.6b widths (hidden 1024, 16 / 8 heads of 128, MLP 3072, vocab 151,936), 4 layers, bf16 compute.
  cfg = jm.presets.get("qwen3-0.6b", num_layers=4, dtype="bfloat16", remat="full")
  t2k, t4k, t8k = (_sft_step_temp_bytes(cfg, seq) for seq in (2048, 4096, 8192))
  assert t8k <= 2.5 * t4k, (t4k, t8k)
  # What the longer sequence adds doubles with it (linear), where [T, T] scores would quadruple it.
  assert t8k - t4k <= 2.4 * (t4k - t2k), (t2k, t4k, t8k)
