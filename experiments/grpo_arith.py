"""GRPO on the arithmetic task from an SFT checkpoint; held-out accuracy and reward per step, with a PNG plot.

  python -m experiments.sft_arith --workdir runs/sft_arith_start --config.train.total_steps=250 \
      --config.optimizer.schedule=constant --config.optimizer.learning_rate=2e-3 --config.optimizer.warmup_steps=20
  python -m experiments.grpo_arith --workdir runs/grpo_arith --config.checkpoint=runs/sft_arith_start/hf

The start is trained at a constant learning rate: from a checkpoint annealed to a near-zero rate, the first steps
of a fresh Adam (about lr x sign(g) on every parameter) undo more than GRPO gains at any rate that learns
(README, Results).
"""

import ml_collections

from experiments import rl_common
from jaxpost.experiment import run_experiment


def get_config() -> ml_collections.ConfigDict:
  c = rl_common.rl_config("grpo")
  c.steps = 100
  c.prompts_per_step = 32
  c.num_minibatches = 1  # one update per rollout batch: ratios are 1 and nothing is clipped
  c.learning_rate = 1e-4
  c.warmup_steps = 5
  c.informative_only = True
  c.save_every = 50
  return c


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  return rl_common.run_rl(config, workdir)


if __name__ == "__main__":
  run_experiment(get_config, main)
