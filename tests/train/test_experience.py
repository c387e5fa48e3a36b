"""RL experience: rollouts from demonstration prefixes, rewards and advantages, against direct computations."""

import jax
import numpy as np
import pytest
from flax import nnx

import jaxpost.models as jm
from jaxpost.data import PromptBatch
from jaxpost.generate import SamplingConfig, generate, left_pad
from jaxpost.losses import PrefixRFTConfig, group_advantages, policy_loss
from jaxpost.rl import GRPOMethod, LUFFYMethod, PrefixRFTMethod
from jaxpost.train.experience import RolloutConfig, informative_groups, make_experience, trim_completions

G, C = 4, 12


@pytest.fixture(scope="module")
def model():
  cfg = jm.ModelConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                       intermediate_size=48)
  return jm.Decoder(cfg, rngs=nnx.Rngs(0))


PROMPTS = PromptBatch(prompts=["a", "b"], prompt_ids=[[5, 6, 7], [8, 9]], answers=["x", "y"],
                      demo_ids=[[10, 11, 12, 13, 14, 15, 2], [16, 17, 18, 2]])


def _reward(prompts, completions, answers):
  """Deterministic and varied: depends on the completion text and the prompt."""
  return np.asarray([(len(c) + len(p) + (a == "x")) % 3 for p, c, a in zip(prompts, completions, answers)], float)


def _decode(ids):
  return "".join(chr(65 + i) for i in ids)


def _experience(model, method, temperature=0.0, step=0):
  cfg = RolloutConfig(group_size=G, completion_len=C, temperature=temperature, stop_ids=(2,))
  return make_experience(model, PROMPTS, jax.random.key(1), step, method=method, cfg=cfg, reward_fn=_reward,
                         decode=_decode)


def test_grpo_experience_is_on_policy_with_group_advantages(model):
  batch, stats = _experience(model, GRPOMethod(), temperature=1.0)
  assert batch["completion_tokens"].shape == (2 * G, C) and batch["prefix_mask"].sum() == 0
  assert batch["prompt_tokens"].shape[1] == 32  # padded to RolloutConfig.pad_multiple
  np.testing.assert_array_equal(batch["prompt_tokens"][:G], np.tile(left_pad([[5, 6, 7]], length=32)[0], (G, 1)))
  expected = group_advantages(batch["rewards"], G)
  np.testing.assert_allclose(batch["advantages"], expected, atol=1e-6)
  assert stats["reward/mean"] == pytest.approx(batch["rewards"].mean())


def test_prefix_rft_rollouts_continue_the_demonstration_prefix(model):
  method = PrefixRFTMethod(cfg=PrefixRFTConfig(n_prefix=2, schedule_steps=10, low_start=0.5, low_end=0.5,
                                               high=0.9))
  batch, _ = _experience(model, method)
  for row in range(2 * G):
    prompt, demo = PROMPTS.prompt_ids[row // G], PROMPTS.demo_ids[row // G]
    length = int(batch["prefix_mask"][row].sum())
    if row % G >= 2:
      assert length == 0
      continue
    assert max(1, int(0.5 * len(demo))) <= length <= min(int(0.9 * len(demo)), len(demo) - 1)
    np.testing.assert_array_equal(batch["prefix_mask"][row, :length], 1)
    np.testing.assert_array_equal(batch["completion_tokens"][row, :length], demo[:length])
    # The continuation is what the sampler produces from prompt ++ prefix (greedy, so reproducible here).
    alone = generate(model, np.asarray([prompt + demo[:length]]), np.ones((1, len(prompt) + length), np.int32),
                     cfg=SamplingConfig(completion_len=C, temperature=0.0, stop_ids=(2,)),
                     max_new_tokens=C - length)
    n = int(alone.lengths[0])
    np.testing.assert_array_equal(batch["completion_tokens"][row, length:length + n],
                                  np.asarray(alone.completion_tokens)[0, :n])
    assert batch["completion_mask"][row].sum() == length + n


def test_prefix_rft_advantages_use_the_on_policy_baseline(model):
  batch, _ = _experience(model, PrefixRFTMethod(cfg=PrefixRFTConfig(n_prefix=1)), temperature=1.0)
  rewards = batch["rewards"].reshape(2, G)
  for group in range(2):
    baseline = rewards[group, 1:].mean()
    for member in range(G):
      row = group * G + member
      mask = batch["completion_mask"][row].astype(bool)
      np.testing.assert_allclose(batch["advantages"][row][mask], rewards[group, member] - baseline, atol=1e-6)


def test_luffy_puts_the_whole_demonstration_first_in_each_group(model):
  batch, _ = _experience(model, LUFFYMethod(), temperature=1.0)
  for group, demo in enumerate(PROMPTS.demo_ids):
    row = group * G
    np.testing.assert_array_equal(batch["completion_tokens"][row, :len(demo)], demo)
    assert batch["completion_mask"][row].sum() == batch["prefix_mask"][row].sum() == len(demo)
    assert batch["prefix_mask"][row + 1:row + G].sum() == 0
  rewards = batch["rewards"].reshape(2, G)
  np.testing.assert_allclose(batch["advantages"].reshape(2, G), rewards - rewards.mean(1, keepdims=True), atol=1e-6)


def test_methods_with_demonstrations_refuse_a_batch_without_them(model):
  no_demos = PromptBatch(prompts=PROMPTS.prompts, prompt_ids=PROMPTS.prompt_ids, answers=PROMPTS.answers)
  with pytest.raises(ValueError, match="LUFFYMethod needs demonstrations"):
    make_experience(model, no_demos, jax.random.key(0), 0, method=LUFFYMethod(), cfg=RolloutConfig(),
                    reward_fn=_reward, decode=_decode)


def test_informative_groups_keep_exactly_the_groups_with_a_nonzero_advantage():
  rewards = np.asarray([1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0], np.float32)  # 3 groups of 4: mixed, uniform, mixed
  advantages = np.asarray(group_advantages(rewards, 4))
  batch = {"prompt_tokens": np.arange(12)[:, None], "completion_mask": np.ones((12, 3), np.int32),
           "advantages": advantages}
  kept, fraction = informative_groups(batch, 4, row_multiple=16)
  assert fraction == pytest.approx(2 / 3)
  assert kept["prompt_tokens"].shape == (16, 1)
  np.testing.assert_array_equal(kept["prompt_tokens"][:8, 0], [0, 1, 2, 3, 8, 9, 10, 11])
  np.testing.assert_array_equal(kept["advantages"][:8], advantages[[0, 1, 2, 3, 8, 9, 10, 11]])
  assert not kept["completion_mask"][8:].any() and not kept["advantages"][8:].any()  # padding rows are empty


def test_trim_completions_drops_only_all_padding_columns_and_keeps_the_loss():
  mask = np.zeros((3, 12), np.int32)
  mask[0, :5], mask[1, :2], mask[2, :1] = 1, 1, 1  # longest completion: 5 tokens
  rng = np.random.RandomState(0)
  batch = {"prompt_tokens": np.arange(6).reshape(3, 2), "prompt_mask": np.ones((3, 2), np.int32),
           "completion_tokens": rng.randint(0, 9, (3, 12)), "completion_mask": mask,
           "advantages": np.asarray([1.0, -0.5, -0.5], np.float32), "logps": rng.randn(3, 12).astype(np.float32)}
  trimmed = trim_completions(batch, multiple=4)
  assert trimmed["completion_mask"].shape == (3, 8) and trimmed["logps"].shape == (3, 8)
  np.testing.assert_array_equal(trimmed["prompt_tokens"], batch["prompt_tokens"])  # other widths untouched
  np.testing.assert_array_equal(trimmed["completion_tokens"], batch["completion_tokens"][:, :8])
  for loss_type in ("grpo", "bnpo", "dr_grpo"):
    full, _ = policy_loss(batch["logps"], batch["logps"] - 0.1, batch["advantages"], batch["completion_mask"],
                          loss_type=loss_type, max_completion_length=12)
    cut, _ = policy_loss(trimmed["logps"], trimmed["logps"] - 0.1, trimmed["advantages"],
                         trimmed["completion_mask"], loss_type=loss_type, max_completion_length=12)
    np.testing.assert_allclose(cut, full, rtol=1e-6)
  assert trim_completions(batch, multiple=16)["completion_mask"].shape == (3, 12)  # never wider than the batch
