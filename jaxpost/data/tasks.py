"""The embedded tasks by name: the arithmetic tasks and the long-context key-value lookup, one entry point."""

from __future__ import annotations

from jaxpost.data import arith, kv_retrieval

EMBEDDED_TASKS = (*arith.TASKS, "kv_retrieval")


def task_records(task: str, split: str, n: int, seed: int = 0, *,
                 retrieval: kv_retrieval.KVRetrievalConfig = kv_retrieval.KVRetrievalConfig()) -> list[dict]:
  """`n` records {"prompt", "completion", "answer"} of an embedded task; `retrieval` shapes kv_retrieval only."""
  if task == "kv_retrieval":
    return kv_retrieval.make_dataset(split, n, seed, retrieval)
  if task not in arith.TASKS:
    raise ValueError(f"task must be one of {EMBEDDED_TASKS}, got {task!r}")
  return arith.make_dataset(task, split, n, seed=seed)
