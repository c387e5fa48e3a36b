"""What the arithmetic RL experiments share: config, method and loss from config, the run, the plot.

One data path, top to bottom: records -> prompt batches -> `rl_train` (rollouts -> rewards -> advantages ->
updates) -> held-out greedy accuracy every `eval_every` steps -> metrics.jsonl and a PNG of reward and accuracy.
"""

from __future__ import annotations

import os

import matplotlib
import ml_collections

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxpost import data, hosts, models, rewards, rl  # noqa: E402
from jaxpost.evaluate import task_evaluator  # noqa: E402
from jaxpost.errors import JaxpostError  # noqa: E402
from jaxpost.files import write_text_atomic  # noqa: E402
from jaxpost.losses import GRPOConfig  # noqa: E402
from jaxpost.train import CheckpointConfig, MeshConfig, OptimizerConfig, export_hf, read_metrics  # noqa: E402
from jaxpost.train.experience import RolloutConfig  # noqa: E402
from jaxpost.train.rl import RLConfig, rl_train  # noqa: E402


def rl_config(method: str) -> ml_collections.ConfigDict:
  """Defaults sized for the tiny model on 2 CPU cores; the paper settings are noted where they differ."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.checkpoint = "runs/sft_arith_start/hf"  # a HF directory: the SFT model to start from
  c.task = "easy"
  c.num_train = 4096
  c.num_eval = 256
  c.seed = 0
  c.steps = 60
  c.prompts_per_step = 16  # paper: 128
  c.group_size = 8
  c.completion_len = 64
  c.temperature = 1.0
  c.learning_rate = 2e-5  # paper: 1e-6 for 7B models
  c.warmup_steps = 0  # optimizer updates of linear warmup (lets Adam's moment estimates settle first)
  c.adam_eps = 1e-8  # Adam's epsilon; near the gradients' scale it damps parameters whose gradient is tiny
  c.informative_only = False  # update only on groups whose rewards differ (DAPO's dynamic-sampling filter)
  c.num_iterations = 1
  c.num_minibatches = 2
  c.eval_every = 10
  c.save_every = 20
  c.progress = True
  c.loss_type = "dr_grpo" if method == "prefix_rft" else "grpo"
  c.beta = 0.0
  c.prefix = ml_collections.ConfigDict(dict(n_prefix=1, schedule_steps=60, low_start=0.95, low_end=0.05, high=0.95,
                                            top_entropy_fraction=0.2, advantage_mode="paper"))
  c.luffy_gamma = 0.1
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: all remaining devices
  return c


def algorithm_of(c: ml_collections.ConfigDict) -> rl.Algorithm:
  """The RL algorithm named by `c.method` (`jaxpost.rl`), with this experiment's settings."""
  policy = GRPOConfig(loss_type=c.loss_type, beta=c.beta, max_completion_length=c.completion_len,
                      temperature=c.temperature)
  options = {"prefix_rft": c.prefix.to_dict(), "luffy": {"gamma": c.luffy_gamma}}.get(c.method, {})
  return rl.build(c.method, policy, options)


def run_rl(c: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) the RL experiment `c` in `workdir`; returns the first and last held-out accuracy."""
  updates = c.steps * c.num_iterations * c.num_minibatches
  if c.warmup_steps > updates:
    raise JaxpostError(f"--config.warmup_steps={c.warmup_steps} is more than the {updates} optimizer updates "
                       f"(--config.steps x --config.num_iterations x --config.num_minibatches); lower it")
  tokenizer = data.arith_tokenizer()
  train_records = data.make_dataset(c.task, "train", c.num_train, seed=c.seed)
  eval_records = data.make_dataset(c.task, "test", c.num_eval, seed=c.seed + 1)
  evaluator = task_evaluator(tokenizer, eval_records, task=c.task, completion_len=c.completion_len)
  algorithm = algorithm_of(c)
  rollout = RolloutConfig(group_size=c.group_size, completion_len=c.completion_len, temperature=c.temperature,
                          stop_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id, pad_multiple=16)
  cfg = RLConfig(total_steps=c.steps, num_iterations=c.num_iterations, num_minibatches=c.num_minibatches,
                 reference=c.beta > 0, informative_only=c.informative_only, eval_every=c.eval_every, seed=c.seed,
                 progress=c.progress, mesh=MeshConfig(**c.mesh),
                 optimizer=OptimizerConfig(learning_rate=c.learning_rate, schedule="constant", total_steps=updates,
                                           warmup_steps=c.warmup_steps, eps=c.adam_eps, clip_norm=1.0),
                 checkpoint=CheckpointConfig(save_every=c.save_every))
  start_accuracy = _start_accuracy(c, workdir, evaluator)  # once every setting is known to be valid
  prompts = data.prompt_iterator(train_records, tokenizer,
                                 data.IteratorConfig(batch_size=c.prompts_per_step, seed=c.seed))
  graphdef, state = rl_train(
      model_fn=models.Pretrained(c.checkpoint), loss_fn=algorithm.loss_fn, method=algorithm.method, rollout=rollout,
      prompts=prompts, reward_fn=rewards.arith_exact_match,
      decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), workdir=workdir, cfg=cfg,
      evaluate=evaluator)
  export_hf(graphdef, state.params, os.path.join(workdir, "hf"))
  if not hosts.is_main():  # process 0 writes the workdir's files and reports
    return {}
  tokenizer.save_pretrained(os.path.join(workdir, "hf"))
  history = read_metrics(workdir)
  plot_rl_metrics(history, start_accuracy, os.path.join(workdir, f"{c.method}.png"), title=f"{c.method} on {c.task}")
  final = {"start_accuracy": start_accuracy, "final_accuracy": history[-1]["eval/accuracy"]}
  print(f"{c.method} on {c.task}: held-out accuracy {start_accuracy:.1%} -> {final['final_accuracy']:.1%} "
        f"after {c.steps} steps")
  return final


def _start_accuracy(c, workdir: str, evaluator) -> float:
  """Held-out accuracy of the starting checkpoint, computed once and kept in the workdir (resumes reuse it)."""
  path = os.path.join(workdir, "start_accuracy.txt")
  if not os.path.exists(path):
    accuracy = evaluator(models.from_pretrained(c.checkpoint))["accuracy"]  # every process: the same number
    if hosts.is_main():
      os.makedirs(workdir, exist_ok=True)
      write_text_atomic(path, f"{accuracy!r}\n")  # atomic: a failed start never leaves a half-written file
    return accuracy
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    return float(text)
  except ValueError:
    raise JaxpostError(f"{path}: holds {text[:40]!r}, not an accuracy; delete it to measure the start again") from None


def plot_rl_metrics(history: list[dict], start_accuracy: float, path: str, *, title: str) -> None:
  """Reward per step and held-out accuracy (step 0 = the starting checkpoint) in one PNG."""
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot([m["step"] for m in history], [m["reward/mean"] for m in history], label="rollout reward", alpha=0.6)
  evals = [(0, start_accuracy)] + [(m["step"], m["eval/accuracy"]) for m in history if "eval/accuracy" in m]
  ax.plot(*zip(*evals), "o-", label="held-out accuracy (greedy)")
  ax.set(xlabel="RL step", ylim=(0, 1), title=title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
