"""KV-cache compression: accuracy against KV budget for dense decoding, the training-free baselines and DMS, and the
hyper-scaling views: accuracy at equal KV memory when the saved memory buys more majority-vote samples, or a longer
generation (completions capped at each of `lengths` tokens, against the KV tokens held at the cap).

  python -m experiments.kv_compression --workdir runs/kv_compression \
      --config.checkpoint=runs/sft_arith/hf \
      --config.dms_checkpoints="((4, 'runs/dms_retrofit/cr4/hf'), (8, 'runs/dms_retrofit/cr8/hf'))"

`checkpoint`: the dense model (experiments/sft_arith writes workdir/hf); `dms_checkpoints`: (nominal CR, path)
pairs of DMS-retrofitted models (experiments/dms_retrofit writes them, DMS settings in their config.json).
`task`: an arithmetic task, or `kv_retrieval` (the checkpoint must then be trained on it).
Memory is measured, not assumed: each cache replays prompt + reference completion of every held-out problem and
reports the KV tokens it holds per (sequence, layer, KV head) at the end (Quest: tokens read per decode step; it
holds everything); for the length view, the replay stops at the cap. Writes kv_compression.md, kv_compression.png
and results.json to the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxpost import data, hosts, models, rewards
from jaxpost.evaluate import EvalConfig, evaluate
from jaxpost.experiment import run_experiment
from jaxpost.generate import left_pad
from jaxpost.models import baseline_caches as bc
from jaxpost.models.dms_cache import DMSCacheFactory
from jaxpost.models.rope import positions_from_mask


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = ""
  c.dms_checkpoints = ()  # ((nominal_cr, path), ...)
  c.task = "easy"
  c.retrieval = ml_collections.ConfigDict(dict(num_pairs=16, key_len=2, value_len=3, filler=0))  # kv_retrieval only
  c.num_eval = 128
  c.seed = 0
  c.completion_len = 96
  c.batch_size = 64
  c.budgets = (6, 10, 16, 24, 48)  # KV tokens per (sequence, layer, KV head); Quest: tokens read per step
  c.sinks = 4
  c.h2o_recent_fraction = 0.5
  c.quest_page_size = 8
  # majority-vote view (samples=() skips it)
  c.vote = ml_collections.ConfigDict(dict(samples=(1, 2, 4), temperature=0.7, num_eval=64))
  c.lengths = (16, 24, 28, 32, 40, 48)  # completion caps of the longer-generation view (tokens); () skips it
  return c


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setting:
  """One row of the table: a model and a cache factory."""

  method: str
  budget: int | None
  model_key: str  # "dense" or "dms_cr<N>"
  factory: object


def _settings(config, dms_keys: list[str]) -> list[Setting]:
  rows = [Setting(method="dense", budget=None, model_key="dense", factory=models.DenseKVCache.create)]
  for b in config.budgets:
    rows += [
        Setting(method="sink_window", budget=b, model_key="dense", factory=bc.SinkWindow(budget=b,
                                                                                          sinks=min(config.sinks, b))),
        Setting(method="h2o", budget=b, model_key="dense",
                factory=bc.H2O(budget=b, recent=int(b * config.h2o_recent_fraction))),
        Setting(method="tova", budget=b, model_key="dense", factory=bc.TOVA(budget=b)),
        Setting(method="quest", budget=b, model_key="dense",
                factory=bc.Quest(budget=max(b, config.quest_page_size), page_size=config.quest_page_size)),
    ]
  rows += [Setting(method=key, budget=None, model_key=key, factory=DMSCacheFactory()) for key in dms_keys]
  return rows


def _load_dms(path: str) -> models.Decoder:
  """A DMS-retrofitted checkpoint; one whose config.json has no DMS settings is refused."""
  model = models.from_pretrained(path)
  if model.cfg.dms is None:
    raise ValueError(f"kv_compression: {path}/config.json has no 'dms' settings; is it a DMS retrofit?")
  return model


@functools.partial(jax.jit, static_argnames=("graphdef", "factory"))
def _replay(graphdef, state, tokens_NxT, prompt_len_N, length_N, *, factory):
  """Feeds each row's prompt (one step) then its completion (one token per step) through a fresh cache; returns
  (KV tokens held per (row, layer, KV head) at the end [N], KV tokens read per decode step [N] or -1)."""
  model = nnx.merge(graphdef, state)
  n, t = tokens_NxT.shape
  p = int(tokens_NxT.shape[1] // 2)  # prompts are left-padded into the first half, completions fill the second
  cache = factory(model.cfg, n, t)
  prompt_mask = (jnp.arange(p)[None] >= p - prompt_len_N[:, None]).astype(jnp.int32)
  positions = positions_from_mask(prompt_mask)
  _, cache = model.hidden_states(tokens_NxT[:, :p], positions=positions, segment_ids=prompt_mask, cache=cache)
  structure = jax.tree.structure(jax.eval_shape(lambda: factory(model.cfg, n, t)))

  def step(i, cache):
    token = jax.lax.dynamic_slice_in_dim(tokens_NxT, p + i, 1, axis=1)
    real = (prompt_len_N + i < length_N)[:, None].astype(jnp.int32)
    _, cache = model.hidden_states(token, positions=(prompt_len_N + i)[:, None], segment_ids=real, cache=cache)
    return jax.tree.unflatten(structure, jax.tree.leaves(cache))

  cache = jax.lax.fori_loop(0, t - p, step, jax.tree.unflatten(structure, jax.tree.leaves(cache)))
  if isinstance(cache, bc.QuestKVCache):
    return length_N.astype(jnp.float32), cache.mean_tokens_read()
  if isinstance(cache, models.DenseKVCache):
    return jnp.sum(cache.valid_BxS, axis=1).astype(jnp.float32), -jnp.ones((n,))
  return jnp.mean(cache.live_tokens(), axis=(0, 2)).astype(jnp.float32), -jnp.ones((n,))


def measure(model, tokenizer, records, factory, max_completion: int | None = None) -> tuple[float, float | None]:
  """Mean KV tokens held per (sequence, layer, KV head) after prompt + reference completion (its first
  `max_completion` tokens, if set), and (Quest) mean KV tokens read per decode step."""
  prompts = [data.encode_prompt(tokenizer, r["prompt"]) for r in records]
  completions = [data.encode_completion(tokenizer, r["completion"])[:max_completion] for r in records]
  half = max(max(map(len, prompts)), max(map(len, completions)))
  prompt_BxP, _ = left_pad(prompts + [[0] * half], pad_id=0)
  tokens = np.zeros((len(records), 2 * half), np.int32)
  tokens[:, :half] = prompt_BxP[:-1]
  for row, completion in enumerate(completions):
    tokens[row, half:half + len(completion)] = completion
  prompt_len = np.array([len(x) for x in prompts], np.int32)
  graphdef, state = nnx.split(model)
  held, read = _replay(graphdef, state, tokens, prompt_len, prompt_len + np.array([len(c) for c in completions]),
                       factory=factory)
  read = float(np.mean(read))
  return float(np.mean(held)), (read if read >= 0 else None)


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if not config.checkpoint:
    raise ValueError("kv_compression: set --config.checkpoint to the dense model's HF directory")
  tokenizer = data.arith_tokenizer()
  records = data.task_records(config.task, "test", config.num_eval, config.seed + 1,
                              retrieval=data.KVRetrievalConfig(**config.retrieval))
  reward, extract = rewards.task_scoring(config.task)
  loaded = {"dense": models.from_pretrained(config.checkpoint)}
  for cr, path in config.dms_checkpoints:
    loaded[f"dms_cr{cr}"] = _load_dms(path)
  greedy = EvalConfig(completion_len=config.completion_len, batch_size=config.batch_size)
  rows = []
  for s in _settings(config, [k for k in loaded if k != "dense"]):
    model = loaded[s.model_key]
    accuracy = evaluate(model, tokenizer, records, reward_fn=reward, extract_answer=extract, cfg=greedy,
                        cache_factory=s.factory)["accuracy"]
    held, read = measure(model, tokenizer, records, s.factory)
    rows.append(dict(method=s.method, budget=s.budget, accuracy=accuracy, kv_held=held, kv_read_per_step=read))
    print(f"{s.method:12s} budget={s.budget}  accuracy={accuracy:.3f}  kv_held={held:.1f}  read/step={read}")
  vote_rows = _hyper_scaling(config, loaded, tokenizer, reward, extract, rows)
  length_rows = _length_scaling(config, loaded, tokenizer, reward, extract, records)
  if hosts.is_main():  # process 0 writes the report
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(dict(budget_rows=rows, vote_rows=vote_rows, length_rows=length_rows), f, indent=2)
    with open(os.path.join(workdir, "kv_compression.md"), "w") as f:
      f.write(markdown_tables(rows, vote_rows, length_rows))
    plot(rows, vote_rows, length_rows, os.path.join(workdir, "kv_compression.png"))
  return dict(budget_rows=rows, vote_rows=vote_rows, length_rows=length_rows)


def _own_cache(model_key: str):
  """The cache a model decodes with in the hyper-scaling views: dense for the dense model, DMS for a retrofit."""
  return models.DenseKVCache.create if model_key == "dense" else DMSCacheFactory()


def _hyper_scaling(config, loaded, tokenizer, reward, extract, rows) -> list[dict]:
  """Majority vote over n sampled completions per problem; KV memory per problem = n * tokens held per sample."""
  records = data.task_records(config.task, "test", config.vote.num_eval, config.seed + 2,
                              retrieval=data.KVRetrievalConfig(**config.retrieval))
  held = {r["method"]: r["kv_held"] for r in rows if r["budget"] is None}
  out = []
  for key, model in loaded.items():
    factory = _own_cache(key)
    for n in config.vote.samples:
      cfg = EvalConfig(completion_len=config.completion_len, batch_size=max(1, config.batch_size // n), samples=n,
                       temperature=config.vote.temperature if n > 1 else 0.0, seed=config.seed)
      accuracy = evaluate(model, tokenizer, records, reward_fn=reward, extract_answer=extract, cfg=cfg,
                          cache_factory=factory)["accuracy"]
      out.append(dict(method=key, samples=n, accuracy=accuracy, kv_per_problem=n * held[key]))
  return out


def _length_scaling(config, loaded, tokenizer, reward, extract, records) -> list[dict]:
  """Greedy accuracy with completions capped at each of `config.lengths` tokens, and the KV tokens held at the cap:
  what a fixed KV memory buys in generation length, dense vs DMS."""
  out = []
  for key, model in loaded.items():
    factory = _own_cache(key)
    for length in config.lengths:
      cfg = EvalConfig(completion_len=length, batch_size=config.batch_size)
      accuracy = evaluate(model, tokenizer, records, reward_fn=reward, extract_answer=extract, cfg=cfg,
                          cache_factory=factory)["accuracy"]
      held, _ = measure(model, tokenizer, records, factory, max_completion=length)
      out.append(dict(method=key, completion_len=length, accuracy=accuracy, kv_held=held))
  return out


def markdown_tables(rows: list[dict], vote_rows: list[dict], length_rows: list[dict]) -> str:
  fmt = lambda x, spec: "—" if x is None else format(x, spec)
  lines = ["| method | budget (KV tokens / seq / layer / head) | accuracy | KV tokens held | KV tokens read / step |",
           "|---|---|---|---|---|"]
  lines += [f"| {r['method']} | {fmt(r['budget'], 'd')} | {r['accuracy']:.3f} | {r['kv_held']:.1f} | "
            f"{fmt(r['kv_read_per_step'], '.1f')} |" for r in rows]
  if vote_rows:
    lines += ["", "| model | samples (majority vote) | accuracy | KV tokens per problem (per layer / head) |",
              "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['samples']} | {r['accuracy']:.3f} | {r['kv_per_problem']:.1f} |"
              for r in vote_rows]
  if length_rows:
    lines += ["", "| model | completion cap (tokens) | accuracy | KV tokens held at the cap |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['completion_len']} | {r['accuracy']:.3f} | {r['kv_held']:.1f} |"
              for r in length_rows]
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], vote_rows: list[dict], length_rows: list[dict], path: str) -> None:
  """Panels: accuracy vs KV tokens held (eviction methods, DMS, dense); vs KV tokens read per decode step (Quest;
  it holds the full cache); majority-vote accuracy vs KV memory per problem; capped-length accuracy vs KV held.
  A hyper-scaling view without rows (its samples or lengths set to ()) has no panel."""
  import matplotlib  # Heavy import, only when plotting.

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  views = [view for view in ((vote_rows, "kv_per_problem", "hyper-scaling: majority vote",
                               "KV tokens per problem (samples x held)"),
                              (length_rows, "kv_held", "hyper-scaling: longer generation",
                               "KV tokens held at the completion cap")) if view[0]]
  fig, axes = plt.subplots(1, 2 + len(views), figsize=(5 * (2 + len(views)), 4.2))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  for method in methods:
    mine = [r for r in rows if r["method"] == method]
    if method == "quest":
      axes[1].plot([r["kv_read_per_step"] for r in mine], [r["accuracy"] for r in mine], "o-", label="quest")
      continue
    if method.startswith("dms"):
      axes[0].plot([r["kv_held"] for r in mine], [r["accuracy"] for r in mine], "*", markersize=12, label=method)
    else:
      axes[0].plot([r["kv_held"] for r in mine], [r["accuracy"] for r in mine], "o-" if len(mine) > 1 else "s",
                   label=method)
  dense = [r for r in rows if r["method"] == "dense"]
  axes[1].plot([r["kv_held"] for r in dense], [r["accuracy"] for r in dense], "s", label="dense (reads all)")
  for ax, (series, memory, _, _) in zip(axes[2:], views):
    for key in dict.fromkeys(r["method"] for r in series):
      mine = [r for r in series if r["method"] == key]
      ax.plot([r[memory] for r in mine], [r["accuracy"] for r in mine], "o-", label=key)
  titles = ("accuracy vs KV memory", "accuracy vs KV reads (Quest)", *(view[2] for view in views))
  xlabels = ("KV tokens held per (seq, layer, KV head)", "KV tokens read per decode step", *(view[3] for view in views))
  for ax, title, xlabel in zip(axes, titles, xlabels):
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  run_experiment(get_config, main)
