"""The RL loop: it learns on a dense toy reward, logs every step once, and resumes exactly."""

import jax
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost import data
from jaxpost.losses import GRPOConfig, make_grpo_loss
from jaxpost.train import CheckpointConfig, OptimizerConfig, read_metrics
from jaxpost.rl import GRPOMethod
from jaxpost.train.experience import RolloutConfig
from jaxpost.train.rl import RLConfig, rl_train

TOKENIZER = data.arith_tokenizer()
RECORDS = data.make_dataset("easy", "train", 16, seed=0)


def _model():
  cfg = jm.ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                       intermediate_size=48)
  return jm.Decoder(cfg, rngs=nnx.Rngs(0))


def digit_fraction(prompts, completions, answers):
  """Dense toy reward: the share of digits among the completion's characters."""
  return np.asarray([sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions], np.float32)


def _run(workdir, total_steps, *, learning_rate=3e-3, num_iterations=1, num_minibatches=1, temperature=1.0):
  prompts = data.prompt_iterator(RECORDS, TOKENIZER, data.IteratorConfig(batch_size=4, seed=0))
  cfg = RLConfig(total_steps=total_steps, num_iterations=num_iterations, num_minibatches=num_minibatches,
                 progress=False, optimizer=OptimizerConfig(learning_rate=learning_rate, schedule="constant"),
                 checkpoint=CheckpointConfig(save_every=1, async_save=False))
  rollout = RolloutConfig(group_size=4, completion_len=8, temperature=temperature,
                          stop_ids=(TOKENIZER.eos_token_id,))
  return rl_train(model_fn=_model, loss_fn=make_grpo_loss(GRPOConfig(temperature=temperature)), method=GRPOMethod(),
                  rollout=rollout, prompts=prompts, reward_fn=digit_fraction,
                  decode=lambda ids: TOKENIZER.decode(ids, skip_special_tokens=True), workdir=str(workdir), cfg=cfg)


def test_grpo_raises_a_dense_reward(tmp_path):
  _run(tmp_path, 12, learning_rate=1e-2, num_iterations=2, num_minibatches=2)
  rewards = [m["reward/mean"] for m in read_metrics(str(tmp_path))]
  assert [m["step"] for m in read_metrics(str(tmp_path))] == list(range(1, 13))
  assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  _, straight = _run(tmp_path / "straight", 3)
  _run(tmp_path / "resumed", 2)
  _, resumed = _run(tmp_path / "resumed", 3)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
  assert [m["step"] for m in read_metrics(str(tmp_path / "resumed"))] == [1, 2, 3]


def test_old_logps_are_taken_at_the_rollout_temperature(tmp_path):
  """With the policy frozen (lr 0), off-policy mini-batches must see ratio exactly 1: old log-probs and the loss's
  log-probs both divide the logits by the rollout temperature."""
  _run(tmp_path, 1, learning_rate=0.0, num_minibatches=2, temperature=0.7)
  (metrics,) = read_metrics(str(tmp_path))
  for key in ("ratio/min", "ratio/mean", "ratio/max"):
    assert metrics[key] == pytest.approx(1.0, abs=1e-5), (key, metrics[key])
