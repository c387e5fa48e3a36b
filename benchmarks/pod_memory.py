"""Per-chip memory and FLOPs of jaxpost's pod programs, from ahead-of-time compiles for a TPU topology on any host.

  pip install -e '.[tpu-aot]'   # libtpu: its compile-only client needs no TPU
  python -m benchmarks.pod_memory --program sft grpo sampler --model llama-3.1-8b --topology v5p:2x2x2 \
      --mesh 1,8,1 --seq 2048 8192 [--find-max-seq] [--json]

Each case builds model and AdamW state abstractly (`nnx.eval_shape`, `train_state_shardings`, the default partition
rules) on a mesh over the chips of `--topology`, lowers the jitted program on sharded `jax.ShapeDtypeStruct`s and
compiles it for TPU. XLA's `memory_analysis()` and `cost_analysis()` are per chip; total = arguments + outputs -
aliased (donated) + temporaries. An HBM overflow gives `fits: false` and the bytes the error says it needed.
Programs (bfloat16 compute, float32 params; several values of a flag give one row each):
  sft      `make_train_step` + `make_sft_loss` on --batch x --seq tokens (default: one sequence per batch-axis chip),
           accumulated over --num-microbatches.
  grpo     one jitted `update(state, reference_params, batch)`: the frozen reference's completion log-probs, then the
           policy's `train_step` with `make_grpo_loss` (beta > 0: the KL reads them), --batch x (P + C) tokens,
           accumulated over --num-microbatches; `reference_bytes` is the reference's per-chip argument share.
  sampler  `generate` (prefill + decode loops, temperature 1) on --batch prompts of P tokens plus C new ones, dense
           cache or `--cache dms` (query-neuron DMS, cache budget 1/--dms-compression of the dense KV bytes).
Training runs get `attention="splash"`, `remat="full"` (what "auto" means on a TPU; here it would resolve from this
CPU host), the sampler no remat. `--find-max-seq` doubles the length (sft: --seq, else C) until HBM overflows, up
to the preset's max_position_embeddings. Analytic FLOPs per chip, with N non-embedding params, E = vocab x hidden,
A = layers x heads x head_dim, T the sequence length: forward = 2 (N tokens + E logit_rows) + 2 A T tokens (causal
half of the full 4 A T); sft = 3 forwards, grpo = 4 (reference forward + policy training), sampler = 1. XLA counts
nothing inside Pallas kernels (splash) and a loop body once (the chunked logits, the decode loop), so
`flops_ratio` falls below 1 as those grow.
"""
from __future__ import annotations

import os

# Before jax starts: libtpu's compile-only client on a host with no TPU, and no lock on the (absent) chips, so
# several compiles (other scripts, test workers) may run at once.
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse
import itertools
import json
import math
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxpost.models as jm
from jaxpost.generate import SamplingConfig, generate
from jaxpost.losses import GRPOConfig, completion_logps, make_grpo_loss, make_sft_loss
from jaxpost.train import (MeshConfig, OptimizerConfig, abstract_state, batch_sharding, make_mesh, make_train_step,
                           param_shardings, split_model, train_state_shardings, train_step)

GIB = 2**30
HBM_GIB = {"TPU v5": 95.74, "TPU v5 lite": 16.0, "TPU v6 lite": 32.0, "TPU v4": 32.0}
TPU_DEFAULTS = {"attention": "splash", "remat": "full"}  # what "auto" means on a TPU
OPTIMIZER = OptimizerConfig(learning_rate=1e-5, warmup_steps=10, total_steps=1000, weight_decay=0.1)
GRPO = GRPOConfig(beta=0.04)


def tpu_mesh(topology: str, sizes: str) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over the chips of a TPU topology such as "v5p:2x2x2"."""
  devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
  data, fsdp, tensor = (int(s) for s in sizes.split(","))
  return make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices)


def hbm_bytes(device) -> int:
  """HBM per chip: from the device when it says, else the table by chip kind."""
  try:
    return int(device.memory_stats()["bytes_limit"])
  except Exception:  # compile-only devices have no memory stats
    return int(HBM_GIB[device.device_kind] * GIB)


def model_config(args, name: str, program: str) -> jm.ModelConfig:
  """The preset in bfloat16 compute; TPU's attention / remat unless flags say otherwise.

  The sampler is never differentiated, so it gets no remat."""
  overrides = {**TPU_DEFAULTS, "remat": "none"} if program == "sampler" else dict(TPU_DEFAULTS)
  overrides.update({k: v for k, v in (("attention", args.attention), ("remat", args.remat)) if v is not None})
  if args.cache == "dms" and program == "sampler":
    overrides["dms"] = jm.DMSConfig()
  return jm.presets.get(name, dtype="bfloat16", **overrides)


def abstract_params(cfg: jm.ModelConfig, mesh: Mesh):
  """(graphdef, params as sharded ShapeDtypeStructs), allocating nothing."""
  graphdef, shapes = split_model(nnx.eval_shape(lambda: jm.Decoder(cfg, rngs=nnx.Rngs(0))))
  return graphdef, abstract_state(shapes, param_shardings(shapes, mesh))


def abstract_batch(shapes: dict, mesh: Mesh) -> dict:
  """{name: (shape, dtype)} -> ShapeDtypeStructs sharded by rows over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in shapes.items()}


def sft_program(cfg, mesh, *, batch: int, seq: int, num_microbatches: int = 1):
  """The jitted SFT step and its abstract (state, batch)."""
  graphdef, params = abstract_params(cfg, mesh)
  shapes, shardings = train_state_shardings(params, optimizer=OPTIMIZER, mesh=mesh)
  step = make_train_step(graphdef=graphdef, loss_fn=make_sft_loss(), optimizer=OPTIMIZER, mesh=mesh,
                         state_shardings=shardings, num_microbatches=num_microbatches)
  data = abstract_batch({k: ((batch, seq), jnp.int32) for k in ("tokens", "positions", "segment_ids", "loss_mask")},
                        mesh)
  return step, (abstract_state(shapes, shardings), data)


def grpo_program(cfg, mesh, *, batch: int, prompt_len: int, completion_len: int, num_microbatches: int = 1):
  """The jitted GRPO update (reference log-probs + policy step) and its abstract (state, reference, batch); the
  reference is placed by the same partition rules as the policy, as `rl_train` places it."""
  graphdef, params = abstract_params(cfg, mesh)
  shapes, shardings = train_state_shardings(params, optimizer=OPTIMIZER, mesh=mesh)
  loss_fn = make_grpo_loss(GRPO)

  def update(state, reference_params, batch):
    ref_logps_BxC, _ = completion_logps(nnx.merge(graphdef, reference_params), batch, temperature=GRPO.temperature)
    batch = {**batch, "ref_logps": jax.lax.stop_gradient(ref_logps_BxC)}
    return train_step(state, batch, graphdef=graphdef, loss_fn=loss_fn, optimizer=OPTIMIZER, mesh=mesh,
                      num_microbatches=num_microbatches)

  ref_shardings = jax.tree.map(lambda x: x.sharding, params)
  jitted = jax.jit(update, in_shardings=(shardings, ref_shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
  p, c = (batch, prompt_len), (batch, completion_len)
  data = abstract_batch({"prompt_tokens": (p, jnp.int32), "prompt_mask": (p, jnp.int32),
                         "completion_tokens": (c, jnp.int32), "completion_mask": (c, jnp.int32),
                         "advantages": ((batch,), jnp.float32)}, mesh)
  return jitted, (abstract_state(shapes, shardings), params, data)


def sampler_program(cfg, mesh, *, batch: int, prompt_len: int, completion_len: int, dms_compression: float):
  """The jitted sampler (temperature 1) and its abstract (params, prompt tokens, prompt mask)."""
  graphdef, params = abstract_params(cfg, mesh)
  sampling = SamplingConfig(completion_len=completion_len)
  factory = jm.DenseKVCache.create
  if cfg.dms is not None:
    dense = jnp.dtype(cfg.compute_dtype).itemsize * 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    factory = jm.DMSCacheFactory(budget_bytes=int(dense * batch * (prompt_len + completion_len) / dms_compression))

  def sample(params, prompt_tokens, prompt_mask):
    return generate(nnx.merge(graphdef, params), prompt_tokens, prompt_mask, cfg=sampling, rng=jax.random.key(0),
                    cache_factory=factory, mesh=mesh)

  prompts = abstract_batch({"tokens": ((batch, prompt_len), jnp.int32), "mask": ((batch, prompt_len), jnp.int32)},
                           mesh)
  return jax.jit(sample), (params, prompts["tokens"], prompts["mask"])


def analytic_flops(cfg, *, program: str, batch: int, seq: int, completion_len: int) -> float:
  """Model FLOPs of the whole program (the module docstring's formula), all chips together."""
  embed = cfg.vocab_size * cfg.hidden_size
  body = jm.param_count(cfg) - embed * (1 if cfg.tie_embeddings else 2)
  attn, tokens = cfg.num_layers * cfg.num_heads * cfg.head_dim, batch * seq
  logit_rows = tokens if program == "sft" else batch * completion_len
  forward = 2 * (body * tokens + embed * logit_rows) + 2 * attn * seq * tokens
  return {"sft": 3 * forward, "grpo": 4 * forward, "sampler": forward}[program]


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * 1024 ** " KMGTP".index(unit or " "))  # XLA's human-readable sizes are binary


def shard_bytes(args) -> int:
  """Bytes per chip of sharded abstract arguments (what `argument_size_in_bytes` reports), from their shardings."""
  size = lambda x: math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
  return sum(size(x) for x in jax.tree.leaves(args))


def overflow_stats(message: str, args) -> dict:
  """What an HBM-overflow error says: the temporaries ("HLO temporaries (415.30G)") or the total ("Used 230.51G of
  95.74G hbm") it needed; arguments come from the shardings."""
  arguments = shard_bytes(args)
  temps = re.search(r"temporaries \(([\d.]+)([KMGTP])?\)", message)
  used = re.search(r"Used ([\d.]+)([KMGTP])? of", message)
  if temps:
    temp = _bytes(*temps.groups())
    return {"argument_bytes": arguments, "temp_bytes": temp, "total_bytes": arguments + temp}
  return {"argument_bytes": arguments, "total_bytes": _bytes(*used.groups()) if used else None}


def compile_stats(jitted, args, mesh: Mesh, hbm: int) -> dict:
  """Per-chip bytes and FLOPs of one AOT compile; `fits: false` (bytes needed, if known) on an HBM overflow."""
  start = time.perf_counter()
  try:
    with jax.set_mesh(mesh):  # splash attention's shard_map reads the mesh from context
      compiled = jitted.lower(*args).compile()
  except Exception as error:  # XlaRuntimeError; anything but an HBM overflow is re-raised
    if "RESOURCE_EXHAUSTED" not in str(error) and "HbmOom" not in str(error):
      raise
    return {"fits": False, **overflow_stats(str(error), args), "compile_s": time.perf_counter() - start}
  mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes)
  return {"fits": total <= hbm, "argument_bytes": mem.argument_size_in_bytes,
          "output_bytes": mem.output_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
          "temp_bytes": mem.temp_size_in_bytes, "total_bytes": total, "flops": cost.get("flops"),
          "compile_s": time.perf_counter() - start}


def run_case(args, *, program, model, topology, mesh_sizes, batch, seq, prompt_len, completion_len) -> dict:
  """One compile: the row of measurements for one program and shape."""
  cfg, mesh = model_config(args, model, program), tpu_mesh(topology, mesh_sizes)
  batch = batch or mesh.shape["data"] * mesh.shape["fsdp"]
  shape = dict(batch=batch, prompt_len=prompt_len, completion_len=completion_len)
  if program == "sft":
    jitted, abstract = sft_program(cfg, mesh, batch=batch, seq=seq, num_microbatches=args.num_microbatches)
  elif program == "grpo":
    jitted, abstract = grpo_program(cfg, mesh, **shape, num_microbatches=args.num_microbatches)
  else:
    jitted, abstract = sampler_program(cfg, mesh, **shape, dms_compression=args.dms_compression)
  seq = seq if program == "sft" else prompt_len + completion_len
  row = {"program": program, "model": model, "topology": topology, "mesh": ",".join(map(str, mesh.shape.values())),
         "chips": mesh.size, "seq": seq, **(shape if program != "sft" else {"batch": batch}),
         "remat": cfg.remat, "attention": cfg.attention, "num_microbatches": args.num_microbatches,
         "cache": args.cache if program == "sampler" else None, "temp_bytes": None, "flops": None,
         "hbm_bytes": hbm_bytes(mesh.devices.flat[0])}
  if program == "grpo":  # the frozen reference's share of the arguments, per chip, and unsharded
    row["reference_bytes"] = shard_bytes(abstract[1])
    row["reference_total_bytes"] = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                                       for x in jax.tree.leaves(abstract[1]))
  row.update(compile_stats(jitted, abstract, mesh, row["hbm_bytes"]))
  flops = analytic_flops(cfg, program=program, batch=batch, seq=seq, completion_len=completion_len)
  row["analytic_flops"] = flops / mesh.size
  row["flops_ratio"] = row["flops"] / row["analytic_flops"] if row["flops"] else None
  return row


def search_max_seq(args, **case) -> list[dict]:
  """Rows of doubling the sequence (sft: --seq; others: the completion) until a compile overflows HBM."""
  key = "seq" if case["program"] == "sft" else "completion_len"
  limit = jm.presets.get(case["model"]).max_position_embeddings
  rows = [run_case(args, **case)]
  while rows[-1]["fits"] and rows[-1]["seq"] * 2 <= limit:
    case[key] *= 2
    rows.append(run_case(args, **case))
  fitting = [r["seq"] for r in rows if r["fits"]]
  return [{**r, "max_seq": max(fitting) if fitting else None} for r in rows]


def format_row(row: dict) -> str:
  """One readable line: the case, GiB per chip and percent of HBM (what an overflow needed, when it said)."""
  gib = lambda key: "?" if row.get(key) is None else f"{row[key] / GIB:.2f}"
  shape = f"{row['batch']} x {row['seq']}" + (f" ({row['prompt_len']}+{row['completion_len']})"
                                              if "prompt_len" in row else "")
  how = ", ".join(f"{k} {row[k]}" for k in ("remat", "attention", "cache") if row.get(k))
  head = f"{row['program']:>7} {row['model']} {row['topology']} mesh {row['mesh']} {shape} ({how}):"
  share = "" if row["total_bytes"] is None else f" = {100 * row['total_bytes'] / row['hbm_bytes']:.0f}%"
  body = (f"args {gib('argument_bytes')} + temp {gib('temp_bytes')} -> {gib('total_bytes')} GiB/chip{share} of "
          f"{gib('hbm_bytes')}")
  if row["fits"]:
    body += f", {row['flops']:.3g} flops/chip ({row['flops_ratio']:.2f} x analytic)"
  else:
    body += " DOES NOT FIT"
  tail = f" [max_seq {row['max_seq']}]" if "max_seq" in row else ""
  return f"{head} {body}; compile {row['compile_s']:.0f} s{tail}"


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--program", nargs="+", default=["sft"], choices=("sft", "grpo", "sampler"))
  parser.add_argument("--model", nargs="+", default=["llama-3.1-8b"], choices=jm.presets.names())
  parser.add_argument("--topology", nargs="+", default=["v5p:2x2x2"])
  parser.add_argument("--mesh", nargs="+", default=["1,-1,1"], help="data,fsdp,tensor sizes; -1 = the rest")
  parser.add_argument("--seq", nargs="+", type=int, default=[2048], help="sft tokens per sequence")
  parser.add_argument("--batch", nargs="+", type=int, default=[0], help="sequences; 0 = one per batch-axis chip")
  parser.add_argument("--prompt-len", nargs="+", type=int, default=[512])
  parser.add_argument("--completion-len", nargs="+", type=int, default=[1536])
  parser.add_argument("--remat", default=None, help=f"ModelConfig.remat (default {TPU_DEFAULTS['remat']})")
  parser.add_argument("--attention", default=None, help=f"ModelConfig.attention (default {TPU_DEFAULTS['attention']})")
  parser.add_argument("--cache", default="dense", choices=("dense", "dms"), help="sampler KV cache")
  parser.add_argument("--dms-compression", type=float, default=8.0, help="dense KV bytes / DMS cache budget")
  parser.add_argument("--num-microbatches", type=int, default=1, help="gradient accumulation of sft / grpo")
  parser.add_argument("--find-max-seq", action="store_true")
  parser.add_argument("--json", action="store_true", help="one JSON line per case")
  args = parser.parse_args(argv)

  rows = []
  for program, model, topology, mesh_sizes, batch in itertools.product(args.program, args.model, args.topology,
                                                                       args.mesh, args.batch):
    shapes = (itertools.product(args.seq, [0], [0]) if program == "sft" else
              itertools.product([0], args.prompt_len, args.completion_len))
    for seq, prompt_len, completion_len in shapes:
      case = dict(program=program, model=model, topology=topology, mesh_sizes=mesh_sizes, batch=batch, seq=seq,
                  prompt_len=prompt_len, completion_len=completion_len)
      for row in search_max_seq(args, **case) if args.find_max_seq else [run_case(args, **case)]:
        print(json.dumps(row) if args.json else format_row(row), flush=True)
        rows.append(row)
  return rows


if __name__ == "__main__":
  main()
