"""Decode tokens/s and KV bytes, dense cache vs DMS-compressed cache, at several context lengths, in one run.

  python -m benchmarks.dms_decode [--preset bench] [--contexts 256,1024,2048] [--batch 8] [--steps 64]

The DMS model is the preset with the query-neuron variant and random weights, so its eviction rate is whatever
those weights give (reported as measured compression). The context is prefilled in chunks; the DMS cache is then
sized to what it held (capacity = live peak + one chunk + the decode steps), as a memory budget would size it,
and decode steps are timed after a warm-up compile. KV bytes are live key/value bytes at the end.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost import models
from jaxpost.models.dms import DMSConfig
from jaxpost.models.dms_cache import DMSKVCache

_STEP = nnx.jit(lambda m, t, pos, c: m(t, positions=pos, cache=c))


def _prefill(model, cache, tokens_BxP, chunk: int):
  for start in range(0, tokens_BxP.shape[1], chunk):
    cols = slice(start, start + chunk)
    positions = jnp.broadcast_to(jnp.arange(tokens_BxP.shape[1])[cols], tokens_BxP[:, cols].shape)
    _, cache = _STEP(model, tokens_BxP[:, cols], positions, cache)
  return cache


def _decode(model, cache, first_B, start: int, steps: int):
  """Feeds `steps` greedy tokens; returns (seconds, cache)."""
  token, position = first_B[:, None], jnp.full(first_B.shape + (1,), start, jnp.int32)
  begin = time.perf_counter()
  for i in range(steps):
    logits, cache = _STEP(model, token, position + i, cache)
    token = jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)
  jax.block_until_ready(cache)
  return time.perf_counter() - begin, cache


def _bench(model, make_cache, tokens_BxP, chunk: int, steps: int):
  cache = _prefill(model, make_cache(), tokens_BxP, chunk)
  _decode(model, cache, tokens_BxP[:, -1], tokens_BxP.shape[1], 2)  # compile the decode step
  seconds, cache = _decode(model, cache, tokens_BxP[:, -1], tokens_BxP.shape[1], steps)
  return tokens_BxP.shape[0] * steps / seconds, cache


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="bench")
  parser.add_argument("--contexts", default="256,1024,2048")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=64)
  parser.add_argument("--chunk", type=int, default=256)
  parser.add_argument("--window", type=int, default=64)
  args = parser.parse_args(argv)
  cfg = models.presets.get(args.preset, dms=DMSConfig(window=args.window))
  dms_model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  dense_model = models.Decoder(cfg.replace(dms=None), rngs=nnx.Rngs(0))
  nnx.update(dense_model, nnx.state(dms_model, nnx.Param))
  print(f"{args.preset} on {jax.devices()[0].platform}, batch {args.batch}, {args.steps} decode steps, "
        f"DMS window {args.window}")
  print("| context | dense tok/s | DMS tok/s | dense KV MiB | DMS live KV MiB | DMS capacity | compression |")
  print("|---|---|---|---|---|---|---|")
  for context in (int(c) for c in args.contexts.split(",")):
    tokens = jax.random.randint(jax.random.key(context), (args.batch, context), 1, cfg.vocab_size)
    total = context + args.steps + 2
    dense_tps, dense_cache = _bench(dense_model, lambda: models.DenseKVCache.create(cfg, args.batch, total),
                                    tokens, args.chunk, args.steps)
    sizing = _prefill(dms_model, DMSKVCache.create(cfg, args.batch, total), tokens, args.chunk)
    capacity = min(total, int(jnp.max(sizing.live_tokens())) + args.chunk + args.steps + 2)
    dms_tps, dms_cache = _bench(dms_model, lambda: DMSKVCache.create(cfg, args.batch, capacity), tokens,
                                args.chunk, args.steps)
    if bool(jnp.any(dms_cache.overflow_B)):
      raise RuntimeError(f"context {context}: the DMS cache overflowed at capacity {capacity}")
    dense_bytes, dms_bytes = int(dense_cache.live_bytes()), int(dms_cache.live_bytes())
    print(f"| {context} | {dense_tps:.0f} | {dms_tps:.0f} | {dense_bytes / 2**20:.2f} | {dms_bytes / 2**20:.2f} | "
          f"{capacity} | {dense_bytes / dms_bytes:.2f}x |")


if __name__ == "__main__":
  main()
