"""Greedy decode throughput: jaxpost `generate` vs `transformers` `generate` on the same weights, in one run.

Workload (../shared/BENCHMARKS.md): the "bench" preset (Qwen3, 4.2M params, float32, random weights seed 0),
prompt 64 tokens, 128 new tokens, greedy, no early stop. tokens/s = batch * new tokens / wall time of the whole
call (prefill included, both sides). Prints the median of --reps timed calls after one warm-up, with min and max;
the calls of the contenders alternate, and the ratio is the median over rounds of the two calls' time ratio, so a
load change on the shared machine between rounds cancels out. transformers is timed at 1 and 2 torch threads (on a
loaded 2-core machine one thread is often much faster) and the ratio is taken against its faster setting.

  python -m benchmarks.generate [--batches 1 8 32] [--reps 5]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers
from flax import nnx

import jaxpost.models as jm
from jaxpost.generate import SamplingConfig, generate


def _interleaved(fns: dict, reps: int) -> tuple[dict[str, list[float]], dict]:
  """One warm-up call each (compilation), then `reps` timed rounds that alternate between the contenders, so a
  load change on the shared machine hits both alike."""
  outputs = {name: fn() for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times, outputs


def _stats(times: list[float], tokens: int) -> tuple[float, str]:
  rates = sorted(tokens / t for t in times)
  median = statistics.median(rates)
  return median, f"{median:.0f} tok/s (min {rates[0]:.0f}, max {rates[-1]:.0f})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="bench")
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--prompt-len", type=int, default=64)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--torch-threads", type=int, nargs="+", default=[1, 2],
                      help="transformers is timed at each thread count; the ratio is against its fastest")
  args = parser.parse_args()

  cfg = jm.presets.get(args.preset)
  ours = jm.Decoder(cfg, rngs=nnx.Rngs(0))
  with tempfile.TemporaryDirectory() as directory:
    jm.save_pretrained(ours, directory)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
  sampling = SamplingConfig(completion_len=args.new_tokens, temperature=0.0)
  print(f"{args.preset}: {jm.param_count(cfg) / 1e6:.1f}M params, prompt {args.prompt_len}, {args.new_tokens} new "
        f"tokens, greedy; jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
  for batch in args.batches:
    prompts = np.random.RandomState(batch).randint(1, cfg.vocab_size, (batch, args.prompt_len)).astype(np.int32)
    mask = np.ones_like(prompts)

    def run_jaxpost():
      return jax.block_until_ready(generate(ours, prompts, mask, cfg=sampling)).completion_tokens

    def run_transformers(threads: int):
      torch.set_num_threads(threads)
      with torch.inference_mode():
        out = theirs.generate(torch.as_tensor(prompts, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                              do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              pad_token_id=0)
      return out[:, args.prompt_len:].numpy()

    contenders = {"jaxpost": run_jaxpost}
    contenders.update({f"transformers/{t} thread(s)": functools.partial(run_transformers, t)
                       for t in args.torch_threads})
    times, outputs = _interleaved(contenders, args.reps)
    rates = {name: _stats(t, batch * args.new_tokens) for name, t in times.items()}
    best_peer = max((name for name in rates if name != "jaxpost"), key=lambda name: rates[name][0])
    same = float(np.mean(np.asarray(outputs["jaxpost"]) == outputs[best_peer]))
    print(f"batch {batch:3d}: " + " | ".join(f"{name} {text}" for name, (_, text) in rates.items()))
    ratio = statistics.median(peer / ours for peer, ours in zip(times[best_peer], times["jaxpost"]))
    print(f"           ratio jaxpost / {best_peer}: {ratio:.2f}x (median of the rounds' ratios), "
          f"identical tokens {same:.1%}", flush=True)


if __name__ == "__main__":
  main()
