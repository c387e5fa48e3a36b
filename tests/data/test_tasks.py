"""`task_records`: one entry point for the embedded tasks, dispatching to the generator each task names."""

import pytest

from jaxpost.data import arith, kv_retrieval, task_records


def test_arithmetic_names_give_the_arithmetic_records():
  assert task_records("medium", "test", 5, seed=3) == arith.make_dataset("medium", "test", 5, seed=3)


def test_kv_retrieval_takes_its_shape():
  cfg = kv_retrieval.KVRetrievalConfig(num_pairs=9, key_len=1)
  records = task_records("kv_retrieval", "train", 4, seed=2, retrieval=cfg)
  assert records == kv_retrieval.make_dataset("train", 4, 2, cfg)
  assert all(r["prompt"].count(";") == 9 for r in records)


def test_an_unknown_task_is_refused_with_the_known_names():
  with pytest.raises(ValueError, match=r"task must be one of \('easy', 'medium', 'hard', 'kv_retrieval'\)"):
    task_records("retrieval", "train", 1)
