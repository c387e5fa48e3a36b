"""SFT of the tiny embedded model, from scratch or from `init_checkpoint`, on an embedded task; held-out greedy
exact match.

  python -m experiments.sft_arith --workdir runs/sft_arith [--config.train.total_steps=600 ...]

`task`: an arithmetic task ("easy" by default) or "kv_retrieval", the long-context key-value lookup
(shaped by `retrieval`; training prompts mix listings of `retrieval_min_pairs` pairs up, a curriculum), which
experiments/kv_compression also takes.

Writes metrics.jsonl (with `eval/accuracy`), checkpoints, and `workdir/hf`: a Hugging Face checkpoint that
`jaxpost.models.from_pretrained` (and `transformers`) loads, the starting point of the RL experiments.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from flax import nnx

from jaxpost import data, hosts, models
from jaxpost.errors import JaxpostError
from jaxpost.evaluate import task_evaluator
from jaxpost.experiment import run_experiment
from jaxpost.losses import make_sft_loss
from jaxpost.train import (CheckpointConfig, MeshConfig, OptimizerConfig, TrainConfig, export_hf, read_metrics,
                           train)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "easy"
  # kv_retrieval only: the held-out problems' shape; training prompts list from `retrieval_min_pairs` pairs up
  c.retrieval = ml_collections.ConfigDict(dict(num_pairs=16, key_len=2, value_len=3, filler=0))
  c.retrieval_min_pairs = 1
  c.model = "tiny"
  c.init_checkpoint = ""  # a Hugging Face directory to fine-tune (e.g. an earlier run's workdir/hf); "": from scratch
  c.num_train = 20000
  c.num_eval = 256
  c.seed = 0
  c.seq_len = 256  # packed rows
  c.batch_size = 16
  c.pack = True
  c.train = ml_collections.ConfigDict(dict(total_steps=600, save_every=200, progress=True))
  # end_lr_ratio > 0 ends the cosine above zero: a start for RL that is used to steps of that size
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=3e-3, warmup_steps=60, schedule="cosine",
                                               end_lr_ratio=0.0, weight_decay=0.01, clip_norm=1.0))
  c.eval = ml_collections.ConfigDict(dict(every=200, completion_len=96, batch_size=128))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: all remaining devices
  return c


def build_model_fn(name: str, tokenizer, seed: int):
  cfg = models.presets.get(name, vocab_size=max(models.presets.get(name).vocab_size, len(tokenizer)),
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
  return lambda: models.Decoder(cfg, rngs=nnx.Rngs(seed))


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  warmup, total = config.optimizer.warmup_steps, config.train.total_steps
  if warmup > total:
    raise JaxpostError(f"--config.optimizer.warmup_steps={warmup} is more than --config.train.total_steps={total}; "
                       f"lower it (e.g. --config.optimizer.warmup_steps={total // 10})")
  tokenizer = data.arith_tokenizer()
  held_out = data.KVRetrievalConfig(**config.retrieval)
  mixed = dataclasses.replace(held_out, min_pairs=config.retrieval_min_pairs)
  train_records = data.task_records(config.task, "train", config.num_train, config.seed, retrieval=mixed)
  eval_records = data.task_records(config.task, "test", config.num_eval, config.seed + 1, retrieval=held_out)
  examples = data.encode_records(tokenizer, train_records)
  iterator = data.sft_iterator(examples, data.IteratorConfig(batch_size=config.batch_size, seed=config.seed),
                               seq_len=config.seq_len, pack=config.pack, pad_id=tokenizer.pad_token_id)
  evaluator = task_evaluator(tokenizer, eval_records, task=config.task, completion_len=config.eval.completion_len,
                             batch_size=config.eval.batch_size)
  train_cfg = TrainConfig(
      total_steps=config.train.total_steps, seed=config.seed, progress=config.train.progress,
      mesh=MeshConfig(**config.mesh),
      eval_every=config.eval.every,
      optimizer=OptimizerConfig(**config.optimizer.to_dict(), total_steps=config.train.total_steps),
      checkpoint=CheckpointConfig(save_every=config.train.save_every))
  model_fn = (models.Pretrained(config.init_checkpoint) if config.init_checkpoint
              else build_model_fn(config.model, tokenizer, config.seed))
  graphdef, state = train(model_fn=model_fn, loss_fn=make_sft_loss(),
                          data=iterator, workdir=workdir, cfg=train_cfg, evaluate=evaluator)
  export_hf(graphdef, state.params, f"{workdir}/hf")
  if not hosts.is_main():  # process 0 writes the workdir's files and reports
    return {}
  tokenizer.save_pretrained(f"{workdir}/hf")
  final = {k[len("eval/"):]: v for k, v in read_metrics(workdir)[-1].items() if k.startswith("eval/")}
  print(f"held-out exact match on {config.task}: {final['accuracy']:.1%} ({len(eval_records)} problems)")
  return final


if __name__ == "__main__":
  run_experiment(get_config, main)
