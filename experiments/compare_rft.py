"""SFT only, GRPO, SFT then GRPO, LUFFY and Prefix-RFT on the hard task, from the same start and step budget.

  python -m experiments.compare_rft --workdir runs/compare_rft --config.checkpoint=runs/sft_arith/hf

Every run starts from `checkpoint` and takes `steps` optimizer steps of `prompts_per_step` prompts (RL: x
`group_size` rollouts; SFT: the prompts' demonstrations); "sft_then_grpo" spends half the steps on each. Writes
compare_rft.md (final held-out accuracy per method and seed) and compare_rft.png (accuracy over steps).
"""

from __future__ import annotations

import os

import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import rl_common  # noqa: E402
from jaxpost import data, hosts, models  # noqa: E402
from jaxpost.evaluate import task_evaluator  # noqa: E402
from jaxpost.experiment import run_experiment  # noqa: E402
from jaxpost.losses import make_sft_loss  # noqa: E402
from jaxpost.train import CheckpointConfig, OptimizerConfig, TrainConfig, export_hf, read_metrics, train  # noqa: E402

RUNS = ("sft_only", "grpo", "sft_then_grpo", "luffy", "prefix_rft")


def get_config() -> ml_collections.ConfigDict:
  c = rl_common.rl_config("prefix_rft")
  c.task = "hard"
  c.completion_len = 224  # hard solutions are up to ~210 tokens
  c.steps = 40
  c.prefix.schedule_steps = 40
  c.eval_every = 10
  c.num_eval = 128
  c.prompts_per_step = 8
  c.num_minibatches = 1  # one optimizer update per step, as the SFT runs
  c.learning_rate = 1e-4
  c.warmup_steps = 5
  c.sft_learning_rate = 3e-4
  c.seeds = (0,)
  c.runs = RUNS
  return c


def _sft(c: ml_collections.ConfigDict, steps: int, workdir: str) -> None:
  """Supervised steps on the task's demonstrations, evaluated like the RL runs."""
  tokenizer = data.arith_tokenizer()
  records = data.make_dataset(c.task, "train", c.num_train, seed=c.seed)
  iterator = data.sft_iterator(data.encode_records(tokenizer, records),
                               data.IteratorConfig(batch_size=c.prompts_per_step, seed=c.seed), seq_len=256,
                               pad_id=tokenizer.pad_token_id, truncate=True)
  evaluator = task_evaluator(tokenizer, data.make_dataset(c.task, "test", c.num_eval, seed=c.seed + 1),
                             task=c.task, completion_len=c.completion_len)
  cfg = TrainConfig(total_steps=steps, seed=c.seed, eval_every=c.eval_every, progress=c.progress,
                    optimizer=OptimizerConfig(learning_rate=c.sft_learning_rate, schedule="constant",
                                              total_steps=steps),
                    checkpoint=CheckpointConfig(save_every=c.save_every))
  graphdef, state = train(model_fn=models.Pretrained(c.checkpoint), loss_fn=make_sft_loss(),
                          data=iterator, workdir=workdir, cfg=cfg, evaluate=evaluator)
  export_hf(graphdef, state.params, os.path.join(workdir, "hf"))


def _run(c: ml_collections.ConfigDict, name: str, workdir: str) -> list[tuple[int, float]]:
  """(step, held-out accuracy) of one run, step 0 being the shared start."""
  run_dir = os.path.join(workdir, name)
  if name == "sft_only":
    _sft(c, c.steps, run_dir)
    return [(m["step"], m["eval/accuracy"]) for m in read_metrics(run_dir) if "eval/accuracy" in m]
  rl = ml_collections.ConfigDict(c.to_dict())
  rl.method = {"sft_then_grpo": "grpo"}.get(name, name)
  offset = 0
  if name == "sft_then_grpo":
    offset = c.steps // 2
    _sft(c, offset, os.path.join(run_dir, "sft"))
    rl.checkpoint, rl.steps = os.path.join(run_dir, "sft", "hf"), c.steps - offset
  rl.loss_type = "dr_grpo" if rl.method == "prefix_rft" else "grpo"
  rl_common.run_rl(rl, os.path.join(run_dir, "rl"))
  history = read_metrics(os.path.join(run_dir, "rl"))
  return [(offset + m["step"], m["eval/accuracy"]) for m in history if "eval/accuracy" in m]


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  held_out = data.make_dataset(config.task, "test", config.num_eval, seed=config.seed + 1)
  evaluator = task_evaluator(data.arith_tokenizer(), held_out, task=config.task,
                             completion_len=config.completion_len)
  start = evaluator(models.from_pretrained(config.checkpoint))["accuracy"]
  curves: dict[str, list[list[tuple[int, float]]]] = {}
  for seed in config.seeds:
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = seed
    for name in config.runs:
      curves.setdefault(name, []).append([(0, start)] + _run(c, name, os.path.join(workdir, f"seed{seed}")))
  finals = {name: float(np.mean([curve[-1][1] for curve in runs])) for name, runs in curves.items()}
  if not hosts.is_main():  # process 0 writes the report (the curves come from metrics.jsonl on shared storage)
    return finals
  _write_table(curves, start, config, os.path.join(workdir, "compare_rft.md"))
  _plot(curves, os.path.join(workdir, "compare_rft.png"), title=f"{config.task} task, {config.steps} steps")
  for name, accuracy in finals.items():
    print(f"{name:>14}: {accuracy:.1%}")
  return finals


def _write_table(curves, start: float, config, path: str) -> None:
  lines = [f"Held-out greedy accuracy on the {config.task} task ({config.num_eval} problems), start {start:.1%}, "
           f"{config.steps} steps x {config.prompts_per_step} prompts (RL: x {config.group_size} rollouts).", "",
           "| method | " + " | ".join(f"seed {s}" for s in config.seeds) + " | mean |",
           "|---|" + "---|" * (len(config.seeds) + 1)]
  for name, runs in curves.items():
    finals = [curve[-1][1] for curve in runs]
    lines.append(f"| {name} | " + " | ".join(f"{a:.1%}" for a in finals) + f" | {np.mean(finals):.1%} |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _plot(curves, path: str, *, title: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, runs in curves.items():
    steps = [s for s, _ in runs[0]]
    ax.plot(steps, np.mean([[a for _, a in curve] for curve in runs], axis=0), "o-", label=name)
  ax.set(xlabel="optimizer step", ylabel="held-out accuracy", ylim=(0, 1), title=title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  run_experiment(get_config, main)
