"""Prefix-RFT on the arithmetic task: one rollout per group continues a demonstration prefix (SPEC §4).

  python -m experiments.prefix_rft_arith --workdir runs/prefix_rft --config.checkpoint=runs/sft_arith_start/hf
  (--config.method=luffy runs the LUFFY variant with the same settings)
"""

import ml_collections

from experiments import rl_common
from jaxpost.experiment import run_experiment


def get_config() -> ml_collections.ConfigDict:
  return rl_common.rl_config("prefix_rft")


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  return rl_common.run_rl(config, workdir)


if __name__ == "__main__":
  run_experiment(get_config, main)
