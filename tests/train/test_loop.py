"""The loop: NaN stops with the last good checkpoint kept; metrics.jsonl has each step once after a resume."""

import json

import numpy as np
import pytest

from jaxpost.train import (CheckpointConfig, Checkpointer, MeshConfig, MetricsWriter, NonFiniteLossError,
                           OptimizerConfig, TrainConfig, read_metrics, train)
from tests.train.helpers import BatchStream, nan_loss, tiny_model


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = TrainConfig(total_steps=10, mesh=MeshConfig(data=2, fsdp=4), progress=False,
                    optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=10),
                    checkpoint=CheckpointConfig(save_every=2, keep=5))
  with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan .* at step 6.*Last good checkpoint: step 4"):
    train(model_fn=tiny_model, loss_fn=nan_loss, data=BatchStream(nan_at=6), workdir=str(tmp_path), cfg=cfg)
  assert Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig()).steps() == [2, 4]
  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in records[:5]) and np.isnan(records[5]["loss"])
  assert {"loss", "grad_norm", "learning_rate", "tokens_per_s", "loss_denominator"} <= set(records[0])


def test_metrics_resume_drops_steps_after_the_checkpoint(tmp_path):
  writer = MetricsWriter(str(tmp_path), start_step=0, total_steps=6, progress=False)
  for step in range(1, 6):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')  # a line cut short by a crash
  writer = MetricsWriter(str(tmp_path), start_step=3, total_steps=6, progress=False)
  for step in range(4, 7):
    writer.write(step, {"loss": 10.0 * step, "tokens_per_s": 5.0})
  writer.close()
  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in records] == [1.0, 0.5, 1.0 / 3, 40.0, 50.0, 60.0]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert all(json.loads(line) for line in lines)
