"""A tiny experiment for the kill-and-resume test: `python -m tests.train.tiny_experiment --workdir DIR`."""

import ml_collections

from jaxpost.experiment import run_experiment
from jaxpost.train import CheckpointConfig, MeshConfig, OptimizerConfig, TrainConfig, train
from tests.train.helpers import TINY, BatchStream, tiny_model, xent_loss


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      total_steps=24, intermediate_size=TINY.intermediate_size, save_every=4, keep=2, learning_rate=1e-2,
      num_microbatches=2, data_delay=0.0, mesh=dict(data=2, fsdp=2, tensor=2)))


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  cfg = TrainConfig(
      total_steps=config.total_steps, num_microbatches=config.num_microbatches, progress=False,
      mesh=MeshConfig(**config.mesh),
      optimizer=OptimizerConfig(learning_rate=config.learning_rate, warmup_steps=3, total_steps=config.total_steps),
      checkpoint=CheckpointConfig(save_every=config.save_every, keep=config.keep))
  model_cfg = TINY.replace(intermediate_size=config.intermediate_size)
  train(model_fn=lambda: tiny_model(cfg=model_cfg), loss_fn=xent_loss, data=BatchStream(delay=config.data_delay),
        workdir=workdir, cfg=cfg)


if __name__ == "__main__":
  run_experiment(get_config, main)
