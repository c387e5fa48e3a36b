"""The embedded tasks by name: the arithmetic tasks and the long-context key-value lookup, one entry point."""

from __future__ import annotations

from jaxpost.data import arith, kv_retrieval

EMBEDDED_TASKS = (*arith.TASKS, "kv_retrieval")


def task_records(task: str, split: str, n: int, seed: int = 0, *, retrieval_pairs: int = 16,
                 retrieval_min_pairs: int | None = None) -> list[dict]:
  """`n` records {"prompt", "completion", "answer"} of an embedded task; kv_retrieval lists `retrieval_pairs`
  pairs per prompt, or a uniform number from `retrieval_min_pairs` up (`kv_retrieval.make_dataset` takes the other
  shape settings)."""
  if task == "kv_retrieval":
    cfg = kv_retrieval.KVRetrievalConfig(num_pairs=retrieval_pairs, min_pairs=retrieval_min_pairs)
    return kv_retrieval.make_dataset(split, n, seed, cfg)
  if task not in arith.TASKS:
    raise ValueError(f"task must be one of {EMBEDDED_TASKS}, got {task!r}")
  return arith.make_dataset(task, split, n, seed=seed)
