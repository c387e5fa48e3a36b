"""Iteration: deterministic per-epoch shuffles, disjoint host shards, exact resume from a saved state."""

import itertools
import json

import numpy as np
import pytest

from jaxpost.data import arith, char_tokenizer, iterator
from jaxpost.data.tokenize import TokenizedExample
from jaxpost.errors import JaxpostError


def _examples(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    length = int(rng.integers(2, 9))
    tokens = np.full(length, 10 + i, np.int32)  # Each example is recognisable by its token value.
    out.append(TokenizedExample(tokens_T=tokens, loss_mask_T=np.ones(length, np.int32)))
  return out


def _ids(batch):
  """Example ids in a batch, row by row, segment by segment."""
  return [int(t) - 10 for t, s, p in zip(batch["tokens"].ravel(), batch["segment_ids"].ravel(),
                                          batch["positions"].ravel()) if s > 0 and p == 0]


def test_one_epoch_visits_each_example_once_in_a_seeded_order():
  examples = _examples(20)
  cfg = iterator.IteratorConfig(batch_size=4, seed=7, num_epochs=2)
  batches = list(iterator.sft_iterator(examples, cfg, seq_len=8))
  assert len(batches) == 10
  epoch0 = [i for b in batches[:5] for i in _ids(b)]
  epoch1 = [i for b in batches[5:] for i in _ids(b)]
  assert epoch0 == np.random.default_rng([7, 0]).permutation(20).tolist()  # Independent: the documented draw.
  assert sorted(epoch1) == list(range(20)) and epoch1 != epoch0
  again = list(iterator.sft_iterator(examples, cfg, seq_len=8))
  assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(batches, again))


def test_unshuffled_drops_the_remainder():
  cfg = iterator.IteratorConfig(batch_size=3, shuffle=False, num_epochs=1)
  batches = list(iterator.sft_iterator(_examples(10), cfg, seq_len=8))
  assert [_ids(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("pack", [False, True])
def test_processes_read_disjoint_shares_of_the_same_global_batches(pack):
  examples = _examples(41, seed=3)
  cfg = iterator.IteratorConfig(batch_size=6, seed=1, num_epochs=1)
  whole = list(iterator.sft_iterator(examples, cfg, seq_len=16, pack=pack, process_index=0, process_count=1))
  per_process = [list(iterator.sft_iterator(examples, cfg, seq_len=16, pack=pack, process_index=h,
                                            process_count=3)) for h in range(3)]
  assert {len(b) for b in per_process} == {len(whole)}
  seen = [set(i for b in batches for i in _ids(b)) for batches in per_process]
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  for k, global_batch in enumerate(whole):  # the shares, in process order, are the one-process batch
    for key in global_batch:
      np.testing.assert_array_equal(np.concatenate([p[k][key] for p in per_process]), global_batch[key])


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
  with pytest.raises(JaxpostError, match=r"batch_size 5 \(the global batch\) does not split over 2 processes"):
    iterator.sft_iterator(_examples(10), iterator.IteratorConfig(batch_size=5), seq_len=8, process_index=0,
                          process_count=2)


@pytest.mark.parametrize("pack", [False, True])
def test_restore_gives_the_same_following_batches(pack):
  examples = _examples(30, seed=5)
  cfg = iterator.IteratorConfig(batch_size=6, seed=11)

  def make():
    return iterator.sft_iterator(examples, cfg, seq_len=12, pack=pack, process_index=1, process_count=2)

  reference = make()
  for _ in range(7):
    next(reference)
  state = json.loads(json.dumps(reference.get_state()))
  assert state["epoch"] >= 1  # The saved position is past an epoch boundary, and the check spans another.
  expected = list(itertools.islice(reference, 9))
  resumed = make()
  resumed.set_state(state)
  got = list(itertools.islice(resumed, 9))
  for a, b in zip(expected, got, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_prompt_iterator():
  tok = char_tokenizer.arith_tokenizer()
  records = arith.make_dataset("easy", "train", 10)
  it = iterator.prompt_iterator(records, tok, iterator.IteratorConfig(batch_size=4, shuffle=False))
  batch = next(it)
  assert batch.prompts == [r["prompt"] for r in records[:4]]
  assert batch.answers == [r["answer"] for r in records[:4]]
  for ids, demo, record in zip(batch.prompt_ids, batch.demo_ids, records[:4], strict=True):
    assert tok.decode(ids) == f"<|bos|><|user|>{record['prompt']}<|assistant|>"
    assert tok.decode(demo) == record["completion"] + "<|eos|>"


def test_prompt_iterator_without_completions_has_no_demonstrations():
  tok = char_tokenizer.arith_tokenizer()
  records = [{"prompt": r["prompt"], "answer": r["answer"]} for r in arith.make_dataset("easy", "train", 4)]
  batch = next(iterator.prompt_iterator(records, tok, iterator.IteratorConfig(batch_size=2)))
  assert batch.demo_ids is None and len(batch.prompt_ids) == 2


def test_bad_config():
  with pytest.raises(ValueError, match="batch_size"):
    iterator.IteratorConfig(batch_size=0)
  with pytest.raises(ValueError, match="process_index 2"):
    iterator.sft_iterator(_examples(4), iterator.IteratorConfig(batch_size=2), seq_len=8, process_index=2,
                          process_count=2)
  with pytest.raises(ValueError, match="do not fill one batch"):
    iterator.sft_iterator(_examples(4), iterator.IteratorConfig(batch_size=5), seq_len=8)
  with pytest.raises(ValueError, match="iterator state"):
    iterator.sft_iterator(_examples(4), iterator.IteratorConfig(batch_size=1), seq_len=8).set_state({"epoch": 1})
