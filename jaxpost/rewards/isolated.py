"""Runs a per-item reward function in worker processes with a per-item timeout, so that no item can stall a run.

Workers are started with `spawn` (or `forkserver`), never `fork`, which is unsafe once JAX holds threads. An item
that exceeds the timeout gets reward 0 and its worker is killed and replaced; an item whose function raises (or
returns a non-finite value, or whose worker dies) gets reward 0; both are counted and reported in a warning.
"""

import collections
import math
import multiprocessing
import multiprocessing.connection
import time
import warnings
import weakref
from typing import Callable, Sequence

import numpy as np

from jaxpost.errors import JaxpostError

ItemRewardFn = Callable[[str, str, str], float]  # (prompt, completion, answer) -> reward; must be picklable.
START_METHODS = ("spawn", "forkserver")


def check_lengths(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> None:
  """The batch reward API takes three equally long sequences."""
  if not len(prompts) == len(completions) == len(answers):
    raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(completions)} completions, {len(answers)} answers")


def _worker_main(fn: ItemRewardFn, conn) -> None:
  """Worker loop: announce readiness, then answer (index, args) requests until told to stop (None)."""
  conn.send(("ready", None, None))
  while (request := conn.recv()) is not None:
    index, args = request
    try:
      conn.send(("ok", index, float(fn(*args))))
    except Exception as e:  # The reward's own failure, reported to the parent.
      conn.send(("error", index, f"{type(e).__name__}: {e}"))


class _Worker:
  """One worker process, its pipe end, and the item it is busy with (None when idle)."""

  def __init__(self, ctx, fn: ItemRewardFn):
    self.conn, child_conn = ctx.Pipe()
    self.process = ctx.Process(target=_worker_main, args=(fn, child_conn), daemon=True)
    self.process.start()
    child_conn.close()
    self.ready, self.index, self.deadline = False, None, math.inf
    self.started = time.monotonic()

  def stop(self, kill: bool) -> None:
    if not kill and self.process.is_alive():
      try:
        self.conn.send(None)
        self.process.join(timeout=1.0)
      except (BrokenPipeError, OSError):
        pass
    if self.process.is_alive():
      self.process.kill()
      self.process.join()
    self.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
  for w in workers:
    w.stop(kill=False)
  workers.clear()


class IsolatedReward:
  """Batch reward `(prompts, completions, answers) -> float32 [B]` computing `fn` per item in worker processes.

  Counts of timed-out and failed items accumulate in `stats`; each call that had any emits one warning.
  """

  def __init__(self, fn: ItemRewardFn, *, timeout_s: float = 10.0, num_workers: int = 2,
               start_method: str = "spawn", startup_timeout_s: float = 120.0, name: str | None = None):
    if start_method not in START_METHODS:
      raise ValueError(f"start_method must be one of {START_METHODS} (fork is unsafe with JAX), got {start_method!r}")
    if timeout_s <= 0 or num_workers < 1:
      raise ValueError(f"need timeout_s > 0 and num_workers >= 1, got {timeout_s} and {num_workers}")
    self._fn, self._timeout_s, self._startup_timeout_s = fn, timeout_s, startup_timeout_s
    self._ctx = multiprocessing.get_context(start_method)
    self.name = name or getattr(fn, "__name__", "reward")
    self.stats = {"items": 0, "timeouts": 0, "errors": 0}
    self._workers: list[_Worker] = [_Worker(self._ctx, fn) for _ in range(num_workers)]
    self._finalizer = weakref.finalize(self, _stop_all, self._workers)

  def close(self) -> None:
    """Stops the worker processes (also done at garbage collection and interpreter exit)."""
    self._finalizer()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _replace(self, worker: _Worker) -> None:
    worker.stop(kill=True)
    self._workers[self._workers.index(worker)] = _Worker(self._ctx, self._fn)

  def __call__(self, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    check_lengths(prompts, completions, answers)
    if not self._workers:
      raise RuntimeError(f"{self.name}: the reward workers were closed")
    rewards_B = np.zeros(len(prompts), np.float32)
    pending = collections.deque(range(len(prompts)))
    timeouts, errors = 0, []
    while pending or any(w.index is not None for w in self._workers):
      now = time.monotonic()
      for w in list(self._workers):
        if w.ready and w.index is None and pending:
          index = pending.popleft()
          try:
            w.conn.send((index, (prompts[index], completions[index], answers[index])))
          except (BrokenPipeError, OSError):  # Died while idle: replace it, the item waits for another.
            pending.appendleft(index)
            self._replace(w)
            continue
          w.index, w.deadline = index, now + self._timeout_s
      waiting = [w for w in self._workers if not w.ready or w.index is not None]
      next_deadline = min(w.deadline if w.ready else w.started + self._startup_timeout_s for w in waiting)
      ready_conns = multiprocessing.connection.wait([w.conn for w in waiting], max(0.0, next_deadline - now))
      for w in [w for w in waiting if w.conn in ready_conns]:
        try:
          status, index, value = w.conn.recv()
        except (EOFError, OSError):  # The worker died (e.g. killed by the OS, or a crash in native code).
          w.process.join(timeout=1.0)
          if not w.ready:
            raise JaxpostError(f"{self.name}: a reward worker died while starting (exit {w.process.exitcode})")
          errors.append(f"worker died (exit {w.process.exitcode})")
          self._replace(w)
          continue
        if status == "ready":
          w.ready = True
        elif status == "ok" and math.isfinite(value):
          rewards_B[index] = value
        else:
          errors.append(value if status == "error" else f"non-finite reward {value}")
        w.index, w.deadline = None, math.inf
      now = time.monotonic()
      for w in list(self._workers):
        if w.ready and w.index is not None and now >= w.deadline:
          timeouts += 1
          self._replace(w)
        elif not w.ready and now >= w.started + self._startup_timeout_s:
          raise JaxpostError(f"{self.name}: a reward worker did not start within {self._startup_timeout_s}s")
    self._report(len(prompts), timeouts, errors)
    return rewards_B

  def _report(self, n: int, timeouts: int, errors: list[str]) -> None:
    self.stats["items"] += n
    self.stats["timeouts"] += timeouts
    self.stats["errors"] += len(errors)
    if timeouts or errors:
      first = f" (first error: {errors[0]})" if errors else ""
      warnings.warn(f"{self.name}: {timeouts} of {n} items timed out after {self._timeout_s}s and {len(errors)} "
                    f"failed{first}; they get reward 0", RuntimeWarning, stacklevel=3)
