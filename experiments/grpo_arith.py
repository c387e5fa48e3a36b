"""GRPO on the arithmetic task from an SFT checkpoint; held-out accuracy and reward per step, with a PNG plot.

  python -m experiments.sft_arith --workdir runs/sft_arith_start --config.train.total_steps=150
  python -m experiments.grpo_arith --workdir runs/grpo_arith --config.checkpoint=runs/sft_arith_start/hf
"""

import ml_collections

from experiments import rl_common
from jaxpost.experiment import run_experiment


def get_config() -> ml_collections.ConfigDict:
  return rl_common.rl_config("grpo")


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  return rl_common.run_rl(config, workdir)


if __name__ == "__main__":
  run_experiment(get_config, main)
