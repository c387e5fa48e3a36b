"""SFT train-step throughput (forward + backward + AdamW) and model-FLOPs utilisation, in one run.

Workload (../shared/BENCHMARKS.md): the "bench" preset (Qwen3, about 4.2M params, float32, random weights seed 0)
and the "bench-100m" preset, batch 8 x 256 tokens, the jaxpost SFT loss on every token, jitted `make_train_step`
with donated state on all local devices (fsdp). MFU = tokens/s x FLOPs per token / peak, where FLOPs per token =
6 x (non-embedding params + vocab x hidden) + 12 x layers x query heads x head_dim x sequence length, and peak is
the best float32 throughput of a jitted 2048 x 2048 `jnp.dot` measured in this same run (matmuls are timed
between the steps, so that a busy shared machine slows both alike). Prints the median of --reps timed steps
after --warmup steps, with min and max.

  python -m benchmarks.train_step [--presets bench bench-100m] [--batch 8] [--seq 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxpost.models as jm
from jaxpost.losses import make_sft_loss
from jaxpost.train import (MeshConfig, OptimizerConfig, batch_sharding, create_train_state, make_mesh,
                           make_train_step, param_shardings, split_model)


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def matmul_runner(n: int = 2048) -> Callable[[], None]:
  """One jitted n x n float32 `jnp.dot` (2 n^3 FLOPs), waited for."""
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  return lambda: dot(a, b).block_until_ready()


def flops_per_token(cfg: jm.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token as BENCHMARKS.md defines them."""
  embed = cfg.vocab_size * cfg.hidden_size
  non_embedding = jm.param_count(cfg) - embed * (1 if cfg.tie_embeddings else 2)
  return 6 * (non_embedding + embed) + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def step_runner(cfg: jm.ModelConfig, *, batch: int, seq_len: int) -> Callable[[], None]:
  """One train step on `batch` x `seq_len` random tokens (the state carried from call to call), waited for."""
  mesh = make_mesh(MeshConfig())
  graphdef, params = split_model(jm.Decoder(cfg, rngs=nnx.Rngs(0)))
  params = jax.device_put(params, param_shardings(params, mesh))
  optimizer = OptimizerConfig(learning_rate=1e-4, warmup_steps=10, total_steps=1000, weight_decay=0.1)
  state = create_train_state(params, optimizer=optimizer, mesh=mesh)
  step = make_train_step(graphdef=graphdef, loss_fn=make_sft_loss(), optimizer=optimizer, mesh=mesh,
                         state_shardings=jax.tree.map(lambda x: x.sharding, state))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len), dtype=np.int32)
  data = {"tokens": tokens, "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)),
          "segment_ids": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}
  data = jax.device_put(data, batch_sharding(mesh))
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], data)
    metrics["loss"].block_until_ready()

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", nargs="+", default=["bench", "bench-100m"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()

  matmul = matmul_runner()
  for _ in range(2):
    matmul()
  matmul_times = [_timed(matmul) for _ in range(args.reps)]
  step_times = {}
  for name in args.presets:
    run = step_runner(jm.presets.get(name), batch=args.batch, seq_len=args.seq)
    for _ in range(args.warmup):
      run()
    step_times[name] = []
    for _ in range(args.reps):  # matmuls interleaved with steps: the peak is taken under the same load
      matmul_times.append(_timed(matmul))
      step_times[name].append(_timed(run))

  peak = 2 * 2048**3 / min(matmul_times)
  print(f"jax {jax.__version__} on {len(jax.devices())} x {jax.devices()[0].device_kind}; matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s (best of {len(matmul_times)}, median "
        f"{2 * 2048**3 / statistics.median(matmul_times) / 1e9:.1f}), 2048x2048 f32 jnp.dot")
  tokens = args.batch * args.seq
  for name, times in step_times.items():
    cfg = jm.presets.get(name)
    rates = sorted(tokens / t for t in times)
    mfu = [100 * r * flops_per_token(cfg, args.seq) / peak for r in rates]
    print(f"{name:>11}: {jm.param_count(cfg) / 1e6:6.1f}M params, batch {args.batch}x{args.seq}: "
          f"{statistics.median(rates):9.0f} tok/s (min {rates[0]:.0f}, max {rates[-1]:.0f}), "
          f"MFU {statistics.median(mfu):5.1f}% (min {mfu[0]:.1f}%, max {mfu[-1]:.1f}%), "
          f"{statistics.median(times) * 1e3:.0f} ms/step")


if __name__ == "__main__":
  main()
