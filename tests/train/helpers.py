"""A tiny decoder, a token-mean cross-entropy loss and random batches for the training-core tests."""

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.models import Decoder, presets

# Every matrix dimension divisible by 4 (fsdp) and 2 (tensor), vocab too.
TINY = presets.get("tiny", vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                   intermediate_size=64, tie_embeddings=False)


def tiny_model(seed: int = 0, cfg=TINY) -> Decoder:
  return Decoder(cfg, rngs=nnx.Rngs(seed))


def xent_loss(model, batch, rng):
  """Next-token cross-entropy, mean over loss tokens, with its denominator reported for accumulation."""
  del rng
  logits = model(batch["tokens"], segment_ids=batch["segment_ids"])
  logps = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  token_logps = jnp.take_along_axis(logps, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
  mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
  den = mask.sum()
  loss = -(token_logps * mask).sum() / jnp.maximum(den, 1.0)
  return loss, {"loss_denominator": den, "nll_sum": -(token_logps * mask).sum()}


def random_batch(seed: int, batch: int = 8, length: int = 16, vocab: int = TINY.vocab_size) -> dict[str, np.ndarray]:
  """Tokens with a random number of trailing pad tokens per row, so rows carry different token counts."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, length), dtype=np.int32)
  lengths = rng.integers(length // 2, length + 1, batch)
  segment_ids = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return {"tokens": tokens * segment_ids, "segment_ids": segment_ids, "loss_mask": segment_ids.copy()}


class BatchStream:
  """Batch i is `random_batch(seed + i)`; the position is i. `delay` seconds per batch mimic a slow data source."""

  def __init__(self, *, seed: int = 0, batch: int = 8, delay: float = 0.0, nan_at: int | None = None):
    self.seed, self.batch, self.delay, self.nan_at = seed, batch, delay, nan_at
    self.index = 0

  def __next__(self) -> dict[str, np.ndarray]:
    time.sleep(self.delay)
    out = random_batch(self.seed + self.index, batch=self.batch)
    self.index += 1
    if self.nan_at is not None:  # a poison column that `nan_loss` adds to the loss
      out["poison"] = np.full((self.batch,), np.nan if self.index == self.nan_at else 0.0, np.float32)
    return out

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = state["index"]


def nan_loss(model, batch, rng):
  """`xent_loss` plus the batch's poison column (NaN on the poisoned batch)."""
  loss, metrics = xent_loss(model, batch, rng)
  return loss + batch["poison"].sum(), metrics
