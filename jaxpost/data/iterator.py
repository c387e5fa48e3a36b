"""Deterministic, host-sharded, resumable iteration over examples.

Epoch e visits the items in the order of a permutation drawn from (seed, e). Global batch k is the k-th run of
`batch_size` consecutive units (single items, or packed rows of several items); the remainder is dropped so shapes
stay static. Process h of n builds only rows [h * b, (h + 1) * b) of it, b = batch_size / n, so processes read
disjoint shares and the global batch is the same for any number of processes (a run on 1 or 16 hosts trains on the
same data). The position is `{"epoch", "index"}` (index = batches already yielded in the epoch): saving it with a
checkpoint and calling `set_state` on a fresh iterator reproduces the remaining batches exactly.
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from jaxpost.data import batching
from jaxpost.data.tokenize import TokenizedExample, check_unknown, encode_completion, encode_prompt
from jaxpost.errors import JaxpostError

Units = list[list[int]]  # Each unit is a list of item indices: one item, or the items packed into one row.


def _singletons(items: list[int]) -> Units:
  return [[i] for i in items]


@dataclasses.dataclass(frozen=True, kw_only=True)
class IteratorConfig:
  """Global batch size (in rows, over all processes), shuffling seed, and the number of epochs (None: forever)."""

  batch_size: int
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")


class DataIterator:
  """Yields `make_batch(units)` for successive groups of `batch_size` units; see the module docstring."""

  def __init__(self, num_items: int, make_batch: Callable[[Units], Any], cfg: IteratorConfig, *,
               process_index: int | None = None, process_count: int | None = None,
               group: Callable[[list[int]], Units] | None = None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    if cfg.batch_size % process_count:
      raise JaxpostError(f"batch_size {cfg.batch_size} (the global batch) does not split over {process_count} "
                         f"processes; make it a multiple of {process_count}")
    self._num_items, self._make_batch, self._group = num_items, make_batch, group
    self._cfg = cfg
    self._process_index, self._rows = process_index, cfg.batch_size // process_count
    self._epoch, self._index = 0, 0
    self._cached_epoch, self._units = -1, []
    if not self._epoch_units(0):
      raise JaxpostError(f"{num_items} items do not fill one batch of {cfg.batch_size}")

  def _epoch_units(self, epoch: int) -> Units:
    """All units of `epoch` (every process computes the same), truncated to whole global batches."""
    if epoch != self._cached_epoch:
      order = np.arange(self._num_items)
      if self._cfg.shuffle:
        order = np.random.default_rng([self._cfg.seed, epoch]).permutation(self._num_items)
      units = (self._group or _singletons)(order.tolist())
      self._units = units[: len(units) - len(units) % self._cfg.batch_size]
      self._cached_epoch = epoch
    return self._units

  def __iter__(self):
    return self

  def __next__(self):
    units = self._epoch_units(self._epoch)
    if self._index * self._cfg.batch_size >= len(units):
      self._epoch, self._index = self._epoch + 1, 0
      units = self._epoch_units(self._epoch)
    if self._cfg.num_epochs is not None and self._epoch >= self._cfg.num_epochs:
      raise StopIteration
    start = self._index * self._cfg.batch_size + self._process_index * self._rows
    self._index += 1
    return self._make_batch(units[start:start + self._rows])

  def get_state(self) -> dict[str, int]:
    """The position, JSON-serialisable, for checkpoints."""
    return {"epoch": self._epoch, "index": self._index}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a position returned by `get_state()`."""
    if set(state) != {"epoch", "index"} or min(state.values()) < 0:
      raise ValueError(f"iterator state must be {{'epoch': int >= 0, 'index': int >= 0}}, got {dict(state)}")
    self._epoch, self._index = int(state["epoch"]), int(state["index"])


def sft_iterator(examples: Sequence[TokenizedExample], cfg: IteratorConfig, *, seq_len: int, pack: bool = False,
                 pad_id: int = 0, truncate: bool = False, process_index: int | None = None,
                 process_count: int | None = None) -> DataIterator:
  """SFT batches (see `batching`): `batch_size` rows of `seq_len` tokens, one example per row or packed."""

  def group(items: list[int]) -> Units:
    rows = batching.pack_rows([len(examples[i]) for i in items], seq_len=seq_len)
    return [[items[j] for j in row] for row in rows]

  def make_batch(units: Units) -> dict[str, np.ndarray]:
    rows = [[examples[i] for i in unit] for unit in units]
    return batching.packed_batch(rows, seq_len=seq_len, pad_id=pad_id, truncate=truncate)

  return DataIterator(len(examples), make_batch, cfg, process_index=process_index, process_count=process_count,
                      group=group if pack else None)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """One RL step's prompts: texts, token ids (chat template applied), reference answers, and demonstrations
  (completion token ids ending in EOS; None when the records have no completion)."""

  prompts: list[str]
  prompt_ids: list[list[int]]
  answers: list[str]
  demo_ids: list[list[int]] | None = None


def prompt_iterator(records: Sequence[Mapping[str, str]], tokenizer: Any, cfg: IteratorConfig, *,
                    process_index: int | None = None, process_count: int | None = None) -> DataIterator:
  """RL prompt batches (`PromptBatch`); records need "prompt" and "answer", and "completion" for demonstrations."""
  prompts = [encode_prompt(tokenizer, r["prompt"]) for r in records]
  has_demos = bool(records) and all("completion" in r for r in records)
  demos = [encode_completion(tokenizer, r["completion"]) for r in records] if has_demos else None
  check_unknown(tokenizer, [p + d for p, d in zip(prompts, demos)] if demos else prompts, records)

  def make_batch(units: Units) -> PromptBatch:
    items = [unit[0] for unit in units]
    return PromptBatch(prompts=[records[i]["prompt"] for i in items], prompt_ids=[prompts[i] for i in items],
                       answers=[records[i]["answer"] for i in items],
                       demo_ids=[demos[i] for i in items] if demos is not None else None)

  return DataIterator(len(records), make_batch, cfg, process_index=process_index, process_count=process_count)
