"""SFT loss vs torch cross-entropy; packing and accumulation invariance of loss and gradient."""

import jax
import jax.numpy as jnp
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


def test_num_loss_tokens_makes_accumulated_micro_batches_equal_one_batch():
  params = fakes.init_params(4)
  grad_fn = jax.jit(jax.value_and_grad(lambda p, b: _loss(p, b)[0]))
  full_loss, full_grad = grad_fn(params, fakes.sft_unpacked(fakes.EXAMPLES))
  micro = [fakes.sft_unpacked(fakes.EXAMPLES[:1]), fakes.sft_unpacked(fakes.EXAMPLES[1:])]
  total_tokens = sum(len(c) for _, c in fakes.EXAMPLES)
  parts = [grad_fn(params, dict(b, num_loss_tokens=jnp.float32(total_tokens))) for b in micro]
  np.testing.assert_allclose(parts[0][0] + parts[1][0], full_loss, rtol=1e-6)
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a + b, c, rtol=1e-5, atol=1e-6),
               parts[0][1], parts[1][1], full_grad)


def test_config_validates():
  with pytest.raises(ValueError, match="label_smoothing"):
    sft.SFTConfig(label_smoothing=1.0)
