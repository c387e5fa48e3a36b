"""Padding, packing and prompt batches, checked against element-by-element reference constructions."""

import numpy as np
import pytest

from jaxpost.data import batching
from jaxpost.data.tokenize import TokenizedExample


def _examples(lengths, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for n in lengths:
    n_prompt = int(rng.integers(1, n))
    out.append(TokenizedExample(tokens_T=rng.integers(7, 100, n).astype(np.int32),
                                loss_mask_T=np.array([0] * n_prompt + [1] * (n - n_prompt), np.int32)))
  return out


def test_padded_batch_matches_reference():
  examples = _examples([5, 9, 3])
  batch = batching.padded_batch(examples, seq_len=10, pad_id=0)
  for b, ex in enumerate(examples):
    for t in range(10):
      real = t < len(ex)
      assert batch["tokens"][b, t] == (ex.tokens_T[t] if real else 0)
      assert batch["loss_mask"][b, t] == (ex.loss_mask_T[t] if real else 0)
      assert batch["segment_ids"][b, t] == int(real)
      assert batch["positions"][b, t] == (t if real else 0)
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      k: ((3, 10), "int32") for k in ("tokens", "loss_mask", "segment_ids", "positions")}


def test_pack_rows_is_greedy_in_order():
  lengths = [4, 3, 5, 2, 8, 1, 1, 7]
  rows = batching.pack_rows(lengths, seq_len=8)
  assert [i for row in rows for i in row] == list(range(len(lengths)))  # Every example once, in order.
  for r, row in enumerate(rows):
    assert sum(lengths[i] for i in row) <= 8
    if r + 1 < len(rows):  # Greedy: the next example did not fit into this row.
      assert sum(lengths[i] for i in row) + lengths[rows[r + 1][0]] > 8
  assert rows == [[0, 1], [2, 3], [4], [5, 6], [7]]


def test_packed_rows_hold_the_examples_as_segments():
  examples = _examples([4, 3, 5, 2, 6, 2], seed=1)
  rows = batching.pack_rows([len(e) for e in examples], seq_len=8)
  batch = batching.packed_batch([[examples[i] for i in row] for row in rows], seq_len=8)
  for b, row in enumerate(rows):
    seg = batch["segment_ids"][b]
    for s, i in enumerate(row, start=1):
      where = seg == s
      assert where.sum() == len(examples[i]) and np.all(np.diff(np.flatnonzero(where)) == 1)
      np.testing.assert_array_equal(batch["tokens"][b][where], examples[i].tokens_T)
      np.testing.assert_array_equal(batch["loss_mask"][b][where], examples[i].loss_mask_T)
      np.testing.assert_array_equal(batch["positions"][b][where], np.arange(len(examples[i])))
    assert np.all(np.diff(seg[seg > 0]) >= 0)  # Segments 1..n appear in order,
    assert not np.any((seg[1:] > 0) & (seg[:-1] == 0))  # and padding only at the end.
    assert np.all(batch["tokens"][b][seg == 0] == 0) and np.all(batch["loss_mask"][b][seg == 0] == 0)
  # A segment's first token starts at position 0: the loss (which never predicts across segments) sees it
  # as a fresh start; its loss_mask is the example's own (0, a prompt token).
  starts = (batch["positions"] == 0) & (batch["segment_ids"] > 0)
  assert np.all(batch["loss_mask"][starts] == 0)


def test_too_long_raises_or_truncates():
  (example,) = _examples([12])
  with pytest.raises(ValueError, match="12 tokens > seq_len 8"):
    batching.padded_batch([example], seq_len=8)
  batch = batching.padded_batch([example], seq_len=8, truncate=True)
  np.testing.assert_array_equal(batch["tokens"][0], example.tokens_T[:8])
  with pytest.raises(ValueError, match="row 0 holds 10 tokens"):
    batching.packed_batch([_examples([5, 5])], seq_len=8)


def test_prompt_batch_left_pads():
  prompts = [[5, 6, 7], [8], [9, 10]]
  batch = batching.prompt_batch(prompts, pad_id=0)
  np.testing.assert_array_equal(batch["prompt_tokens"], [[5, 6, 7], [0, 0, 8], [0, 9, 10]])
  np.testing.assert_array_equal(batch["prompt_mask"], [[1, 1, 1], [0, 0, 1], [0, 1, 1]])
  wider = batching.prompt_batch(prompts, prompt_len=5, pad_id=2)
  assert wider["prompt_tokens"].shape == (3, 5) and wider["prompt_tokens"][1].tolist() == [2, 2, 2, 2, 8]
  with pytest.raises(ValueError, match="3 tokens > prompt_len 2"):
    batching.prompt_batch(prompts, prompt_len=2)
