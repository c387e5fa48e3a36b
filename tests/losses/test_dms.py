"""DMS retrofit loss: the KL kernel against torch, the CR schedule and hinge by hand, and a short retrofit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxpost.models as jm
from jaxpost.losses import dms as dms_loss
from jaxpost.models import dms


def _model(variant="adapter"):
  cfg = jm.ModelConfig(vocab_size=61, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                       intermediate_size=64, qk_norm=True, dms=dms.DMSConfig(variant=variant, window=2))
  return jm.Decoder(cfg, rngs=nnx.Rngs(0))


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  segment_ids = np.array([[1] * 16, [1] * 9 + [2] * 5 + [0] * 2], np.int32)
  positions = np.array([list(range(16)), list(range(9)) + list(range(5)) + [0, 0]], np.int32)
  return {"tokens": jnp.asarray(rng.randint(1, 61, (2, 16)) * (segment_ids > 0)), "positions": jnp.asarray(positions),
          "segment_ids": jnp.asarray(segment_ids), "loss_mask": jnp.asarray(segment_ids > 0, jnp.int32)}


def test_kl_matches_torch_kl_div():
  rng = np.random.RandomState(0)
  student, teacher = rng.randn(2, 3, 7, 11), rng.randn(2, 3, 7, 11)
  want = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(teacher), -1),
                                    torch.log_softmax(torch.tensor(student), -1), log_target=True,
                                    reduction="none").sum(-1).numpy()
  got = np.asarray(dms_loss.distillation_kl(jnp.asarray(student), jnp.asarray(teacher)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_target_schedule_and_one_sided_hinge_by_hand():
  target = lambda step: float(dms_loss.target_eviction_fraction(step, target_cr=4.0, ramp_steps=300))
  assert target(0) == 0.0
  assert target(150) == pytest.approx(1 - 1 / 2.5)
  assert target(300) == pytest.approx(0.75) and target(10_000) == pytest.approx(0.75)
  # 1 layer, 2 rows, 4 tokens, 2 heads; row 1 has one padding token
  d = np.zeros((1, 2, 4, 2))
  d[0, 0, :2, :] = 1  # row 0: 4 of 8 evict
  d[0, 1, 0, 0] = d[0, 1, 3, 1] = 1  # row 1: 1 of 6 real (the second is on padding)
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
  per_row, per_layer = dms_loss.eviction_fractions(jnp.asarray(d), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(per_row), [0.5, 1 / 6], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(per_layer), [5 / 14], rtol=1e-6)
  loss = dms_loss.compression_loss(per_row, jnp.array([True, True]), jnp.asarray(0.4))
  assert float(loss) == pytest.approx((0.0 + (0.4 - 1 / 6)) / 2)


def test_loss_equals_its_parts_computed_independently():
  model, batch, rng = _model("query_neuron"), _batch(), jax.random.key(3)
  cfg = dms_loss.DMSLossConfig(target_cr=4.0, ramp_steps=100, compression_weight=2.0)
  loss, metrics = dms_loss.make_dms_loss(cfg)(model, {**batch, "step": jnp.array([50, 50])}, rng)
  teacher = np.asarray(model(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"]))
  student, d = dms.forward(model, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                           mode="soft", rng=rng)
  real = np.asarray(batch["segment_ids"]) > 0
  p_s = jax.nn.softmax(np.asarray(student, np.float64), -1)
  kl = np.sum(np.asarray(p_s) * (np.log(p_s) - np.asarray(jax.nn.log_softmax(teacher.astype(np.float64), -1))), -1)
  want_kl = kl[real].mean()
  d = np.asarray(d)
  frac = np.array([d[:, row][:, real[row]].mean() for row in range(2)])
  target = 1 - 1 / (1 + 3 * 0.5)
  want = want_kl + 2.0 * np.maximum(target - frac, 0).mean()
  assert float(metrics["kl"]) == pytest.approx(want_kl, rel=1e-4, abs=1e-6)
  assert float(loss) == pytest.approx(want, rel=1e-4)
  assert float(metrics["target_fraction"]) == pytest.approx(target)
  for layer in range(2):
    assert float(metrics[f"eviction_fraction/layer{layer}"]) == pytest.approx(d[layer][real].mean(), rel=1e-6)
  assert want_kl > 0  # the noisy student does evict



def test_teacher_logits_in_the_batch_replace_the_self_teacher():
  """Given the model's own no-eviction logits, the loss is unchanged; given another teacher's, the KL is taken
  against that teacher (the frozen original model of a retrofit), by the same independent formula."""
  model, batch, rng = _model(), _batch(), jax.random.key(3)
  loss_fn = dms_loss.make_dms_loss(dms_loss.DMSLossConfig(target_cr=4.0, ramp_steps=0))
  own = model(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  base, _ = loss_fn(model, batch, rng)
  same, _ = loss_fn(model, {**batch, "teacher_logits": own}, rng)
  assert float(same) == pytest.approx(float(base), rel=1e-6)
  other = jnp.asarray(np.random.RandomState(1).randn(*own.shape), jnp.float32)
  _, metrics = loss_fn(model, {**batch, "teacher_logits": other}, rng)
  student, _ = dms.forward(model, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                           mode="soft", rng=rng)
  real = np.asarray(batch["segment_ids"]) > 0
  want = np.asarray(dms_loss.distillation_kl(student, other))[real].mean()
  assert float(metrics["kl"]) == pytest.approx(float(want), rel=1e-5)
  grads = jax.grad(lambda t: loss_fn(model, {**batch, "teacher_logits": t}, rng)[0])(other)
  assert not np.asarray(grads).any()  # the teacher is a constant

def test_a_short_retrofit_raises_eviction_to_the_target_while_kl_stays_small():
  model, batch = _model("adapter"), _batch(1)
  loss_fn = dms_loss.make_dms_loss(dms_loss.DMSLossConfig(target_cr=2.0, ramp_steps=0))
  _, metrics = loss_fn(model, batch, jax.random.key(0))
  assert float(metrics["eviction_fraction"]) < 0.05 and float(metrics["kl"]) < 1e-3  # zero-init adapter: ~nothing
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, metrics), grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch, rng),
                                                has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  for i in range(40):
    params, opt_state, metrics = step(params, opt_state, jax.random.key(i))
  assert float(metrics["eviction_fraction"]) > 0.4  # target 0.5
  _, hard_d = dms.forward(nnx.merge(graphdef, params), batch["tokens"], positions=batch["positions"],
                                    segment_ids=batch["segment_ids"], mode="hard")
  assert float(jnp.mean(hard_d)) > 0.3


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="target_cr"):
    dms_loss.DMSLossConfig(target_cr=0.5)
  with pytest.raises(ValueError, match="ramp_steps"):
    dms_loss.DMSLossConfig(ramp_steps=-1)
