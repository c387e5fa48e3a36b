"""SFT loss vs torch cross-entropy; packing and accumulation invariance of loss and gradient."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxpost.losses import sft
from tests.losses import fakes


def _loss(params, batch, cfg=sft.SFTConfig()):
  return sft.make_sft_loss(cfg)(fakes.bind(params), batch, None)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_sft_loss_matches_torch_cross_entropy(label_smoothing):
  params = fakes.init_params(2)
  batch = fakes.sft_unpacked(fakes.EXAMPLES)
  loss, metrics = jax.jit(_loss, static_argnums=2)(params, batch, sft.SFTConfig(label_smoothing=label_smoothing))
  logits = torch.tensor(np.asarray(fakes.fake_model(params, batch["tokens"], positions=batch["positions"],
                                                    segment_ids=batch["segment_ids"])), dtype=torch.float64)
  labels = torch.tensor(np.where(np.asarray(batch["loss_mask"])[:, 1:] == 1, np.asarray(batch["tokens"])[:, 1:], -100).astype(np.int64))
  want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                         label_smoothing=label_smoothing)
  np.testing.assert_allclose(float(loss), want.item(), rtol=1e-6, atol=1e-6)
  valid = labels != -100
  assert float(metrics["n_tokens"]) == valid.sum().item() == 7
  pred = logits[:, :-1].argmax(-1)
  np.testing.assert_allclose(float(metrics["accuracy"]), (pred[valid] == labels[valid]).double().mean().item(), atol=1e-6)
  ent = torch.distributions.Categorical(logits=logits[:, :-1]).entropy()
  np.testing.assert_allclose(float(metrics["entropy"]), ent[valid].mean().item(), atol=1e-5)


def test_packed_rows_give_same_loss_and_gradient_as_unpacked():
  params = fakes.init_params(3)
  grad_fn = jax.jit(jax.value_and_grad(lambda p, b: _loss(p, b)[0]))
  loss_u, grad_u = grad_fn(params, fakes.sft_unpacked(fakes.EXAMPLES))
  loss_p, grad_p = grad_fn(params, fakes.sft_packed(fakes.EXAMPLES, [[0, 1], [2]]))
  np.testing.assert_allclose(loss_p, loss_u, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grad_p, grad_u)


def test_accumulated_micro_batches_with_unequal_token_counts_equal_one_batch():
  """The loss reports `loss_denominator`; the train step's accumulation weights micro-batches by it."""
  from flax import nnx

  import jaxpost.models as jm
  from jaxpost.train import accumulate_gradients

  cfg = jm.ModelConfig(vocab_size=11, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                       intermediate_size=24)
  graphdef, params = nnx.split(jm.Decoder(cfg, rngs=nnx.Rngs(0)))
  loss_fn = sft.make_sft_loss()
  batch = fakes.sft_unpacked(fakes.EXAMPLES[:2])
  assert batch["loss_mask"][0].sum() != batch["loss_mask"][1].sum()
  full_loss, full_grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch, None)[0])(params)
  loss, _, grads = accumulate_gradients(params, batch, jax.random.key(0), graphdef=graphdef, loss_fn=loss_fn,
                                        num_microbatches=2)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, full_grads)


def test_config_validates():
  with pytest.raises(ValueError, match="label_smoothing"):
    sft.SFTConfig(label_smoothing=1.0)
