"""The sampler's output in the RL batch layout, and small host-side helpers around it (padding, detokenising).

Letters: N rows (prompts x samples, grouped: rows i*n .. i*n+n-1 come from prompt i), P prompt, C completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class Rollout:
  """Generated completions. `completion_mask` is 1 up to and including the stop token (or to the length limit).

  `logps` are log softmax(logits / T) of the chosen tokens (T = 1 for greedy), the policy's old_logps;
  `sampling_logps` are under the truncated distribution actually sampled from (0 for greedy). Both are 0 where the
  mask is 0. `stopped` says the row ended on a stop id rather than the length limit. `overflow` says the row's KV
  cache ran out of slots (a compressed cache sized below what the row needed): its tokens are not what an
  unbounded cache would give, so callers must not use them silently.
  """

  prompt_tokens: jax.Array  # [N, P] left-padded
  prompt_mask: jax.Array  # [N, P]
  completion_tokens: jax.Array  # [N, C] right-padded
  completion_mask: jax.Array  # [N, C]
  logps: jax.Array  # [N, C]
  sampling_logps: jax.Array  # [N, C]
  lengths: jax.Array  # [N]
  stopped: jax.Array  # [N] bool
  overflow: jax.Array  # [N] bool
  group_size: int = flax.struct.field(pytree_node=False, default=1)

  def rl_batch(self) -> dict[str, jax.Array]:
    """The arrays of an RL batch (advantages are added by the caller)."""
    return dict(prompt_tokens=self.prompt_tokens, prompt_mask=self.prompt_mask,
                completion_tokens=self.completion_tokens, completion_mask=self.completion_mask,
                old_logps=self.logps)


class Tokenizer(Protocol):
  def decode(self, ids: list[int], **kwargs) -> str: ...


def decode_completions(rollout: Rollout, tokenizer: Tokenizer, **decode_kwargs) -> list[str]:
  """Each row's completion as text (masked tokens only; e.g. `skip_special_tokens=True` drops the stop token)."""
  tokens_NxC = np.asarray(rollout.completion_tokens)
  lengths_N = np.asarray(rollout.lengths)
  return [tokenizer.decode(row[:n].tolist(), **decode_kwargs) for row, n in zip(tokens_NxC, lengths_N)]


def left_pad(sequences: Sequence[Sequence[int]], *, length: int | None = None,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (tokens [B, P], mask [B, P]) int32, left-padded to `length` (default: the longest)."""
  longest = max((len(s) for s in sequences), default=0)
  length = longest if length is None else length
  if longest > length:
    raise ValueError(f"left_pad: a sequence has {longest} tokens, more than length={length}")
  if any(len(s) == 0 for s in sequences):
    raise ValueError("left_pad: empty sequence; every prompt needs at least one token")
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), np.int32)
  for row, seq in enumerate(sequences):
    tokens[row, length - len(seq):] = seq
    mask[row, length - len(seq):] = 1
  return tokens, mask
