"""The loop: NaN stops with the last good checkpoint kept; metrics.jsonl has each step once after a resume."""

import json
import time

import jax
import numpy as np
import pytest

from jaxpost.train import (CheckpointConfig, Checkpointer, MeshConfig, MetricsWriter, NonFiniteLossError,
                           OptimizerConfig, TrainConfig, abstract_state, make_mesh, read_metrics, split_model, train,
                           train_state_shardings)
from tests.train.helpers import BatchStream, nan_loss, tiny_model, xent_loss


def _embed_norm(model) -> dict[str, float]:
  return {"embed_norm": float(np.linalg.norm(np.asarray(model.embed.embedding[...])))}


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
  optimizer = OptimizerConfig(learning_rate=1e-2, total_steps=10)
  cfg = TrainConfig(total_steps=10, mesh=MeshConfig(data=2, fsdp=4), progress=False, optimizer=optimizer,
                    checkpoint=CheckpointConfig(save_every=2, keep=5), eval_every=3)
  with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan.* at step 6.*Last good checkpoint: step 4"):
    train(model_fn=tiny_model, loss_fn=nan_loss, data=BatchStream(nan_at=6), workdir=str(tmp_path), cfg=cfg,
          evaluate=_embed_norm)
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig())
  assert checkpointer.steps() == [2, 4]
  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in records[:5]) and np.isnan(records[5]["loss"])
  assert {"loss", "grad_norm", "learning_rate", "tokens_per_s", "loss_denominator"} <= set(records[0])
  # Evaluated on the model after step 3 only (step 6 is non-finite, so not evaluated).
  assert [r["step"] for r in records if "eval/embed_norm" in r] == [3]
  _, params = split_model(tiny_model())
  target = abstract_state(*train_state_shardings(params, optimizer=optimizer, mesh=make_mesh(MeshConfig())))
  state, position = checkpointer.restore_latest(target)
  assert int(state.step) == 4 and position == {"data": {"index": 4}}
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_evaluate_runs_on_the_trained_model_every_eval_every_steps_and_at_the_end(tmp_path):
  cfg = TrainConfig(total_steps=5, mesh=MeshConfig(fsdp=8), progress=False,
                    optimizer=OptimizerConfig(learning_rate=1e-2, total_steps=5),
                    checkpoint=CheckpointConfig(save_every=100), eval_every=2)
  graphdef, state = train(model_fn=tiny_model, loss_fn=xent_loss, data=BatchStream(), workdir=str(tmp_path),
                          cfg=cfg, evaluate=_embed_norm)
  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records if "eval/embed_norm" in r] == [2, 4, 5]
  final = np.linalg.norm(np.asarray(state.params["embed"]["embedding"]))
  np.testing.assert_allclose(records[-1]["eval/embed_norm"], final, rtol=1e-6)
  assert Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig()).steps() == [5]


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


def test_metrics_lines_carry_their_wall_clock_time(tmp_path):
  before = time.time()
  writer = MetricsWriter(str(tmp_path), start_step=0, total_steps=2, progress=False)
  writer.write(1, {"loss": 1.0})
  writer.write(2, {"loss": 0.5})
  writer.close()
  times = [r["time"] for r in read_metrics(str(tmp_path))]
  assert before - 1 <= times[0] <= times[1] <= time.time() + 1
