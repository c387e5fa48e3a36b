"""Token arrays for the losses: padded or packed SFT batches and left-padded RL prompt batches.

SFT batch, all int32 [B, T]: `tokens`, `loss_mask` (1 on completion tokens), `segment_ids` (0 = padding, 1..n =
the examples packed into a row), `positions` (restarting at 0 in every segment, 0 on padding). Padding is packing
with one example per row.
"""

from typing import Sequence

import numpy as np

from jaxpost.data.tokenize import TokenizedExample


def _fit(example: TokenizedExample, seq_len: int, truncate: bool, where: str) -> TokenizedExample:
  if len(example) <= seq_len:
    return example
  if not truncate:
    raise ValueError(f"{where} has {len(example)} tokens > seq_len {seq_len} (pass truncate=True to cut it)")
  return TokenizedExample(tokens_T=example.tokens_T[:seq_len], loss_mask_T=example.loss_mask_T[:seq_len],
                          source=example.source)


def pack_rows(lengths: Sequence[int], *, seq_len: int) -> list[list[int]]:
  """Groups example indices into rows of at most `seq_len` tokens, greedily and in order (deterministic)."""
  rows: list[list[int]] = []
  used = seq_len  # Forces a new row for the first example.
  for i, n in enumerate(lengths):
    n = min(n, seq_len)
    if used + n > seq_len:
      rows.append([])
      used = 0
    rows[-1].append(i)
    used += n
  return rows


def packed_batch(rows: Sequence[Sequence[TokenizedExample]], *, seq_len: int, pad_id: int = 0,
                 truncate: bool = False) -> dict[str, np.ndarray]:
  """Builds a [len(rows), seq_len] SFT batch; the examples of a row become segments 1..n, in order."""
  shape = (len(rows), seq_len)
  batch = {"tokens": np.full(shape, pad_id, np.int32), "loss_mask": np.zeros(shape, np.int32),
           "segment_ids": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32)}
  for b, row in enumerate(rows):
    start = 0
    for s, example in enumerate(row):
      example = _fit(example, seq_len, truncate, example.source or f"row {b} example {s}")
      end = start + len(example)
      if end > seq_len:
        raise ValueError(f"row {b} holds {end} tokens > seq_len {seq_len}")
      batch["tokens"][b, start:end] = example.tokens_T
      batch["loss_mask"][b, start:end] = example.loss_mask_T
      batch["segment_ids"][b, start:end] = s + 1
      batch["positions"][b, start:end] = np.arange(len(example))
      start = end
  return batch


def padded_batch(examples: Sequence[TokenizedExample], *, seq_len: int, pad_id: int = 0,
                 truncate: bool = False) -> dict[str, np.ndarray]:
  """One example per row, right-padded to `seq_len`."""
  return packed_batch([[e] for e in examples], seq_len=seq_len, pad_id=pad_id, truncate=truncate)


def prompt_batch(prompts: Sequence[Sequence[int]], *, prompt_len: int | None = None,
                 pad_id: int = 0) -> dict[str, np.ndarray]:
  """Left-pads prompt token ids: `prompt_tokens` [B, P] and `prompt_mask` [B, P] (P = longest if not given)."""
  if not prompts:
    raise ValueError("prompt_batch needs at least one prompt")
  longest = max(len(p) for p in prompts)
  prompt_len = longest if prompt_len is None else prompt_len
  if longest > prompt_len:
    raise ValueError(f"a prompt has {longest} tokens > prompt_len {prompt_len}")
  tokens_BxP = np.full((len(prompts), prompt_len), pad_id, np.int32)
  mask_BxP = np.zeros((len(prompts), prompt_len), np.int32)
  for b, ids in enumerate(prompts):
    if ids:
      tokens_BxP[b, -len(ids):] = ids
      mask_BxP[b, -len(ids):] = 1
  return {"prompt_tokens": tokens_BxP, "prompt_mask": mask_BxP}
