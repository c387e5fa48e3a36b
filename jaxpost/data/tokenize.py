"""Prompt/completion records to token ids, with a loss mask on the completion tokens only.

With a chat template the prompt is rendered as one user turn plus the generation prompt (the assistant header),
and the completion is the assistant's text followed by EOS; without one, prompt and completion are concatenated.
"""

import dataclasses
import warnings
from typing import Any, Mapping

import numpy as np

from jaxpost.errors import JaxpostError


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizedExample:
  """One example: `tokens_T` and `loss_mask_T` (1 on completion tokens, the targets of SFT)."""

  tokens_T: np.ndarray
  loss_mask_T: np.ndarray
  source: str | None = None  # where the record came from ("data.jsonl:7"), for error messages

  def __post_init__(self):
    if self.tokens_T.ndim != 1 or self.tokens_T.shape != self.loss_mask_T.shape:
      raise ValueError(f"tokens {self.tokens_T.shape} and loss_mask {self.loss_mask_T.shape} must be equal 1-D")

  def __len__(self) -> int:
    return int(self.tokens_T.shape[0])


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
  """Token ids of a prompt up to where the model starts writing (for SFT, RL rollouts and evaluation)."""
  if tokenizer.chat_template:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
  return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def encode_completion(tokenizer: Any, completion: str) -> list[int]:
  """Token ids of a completion, followed by EOS when the tokenizer has one."""
  ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
  if tokenizer.eos_token_id is not None:
    ids.append(tokenizer.eos_token_id)
  return ids


def encode_record(tokenizer: Any, record: Mapping[str, str]) -> TokenizedExample:
  """Encodes a {"prompt", "completion"} record; the loss mask is 1 exactly on the completion (and EOS) tokens."""
  prompt_ids = encode_prompt(tokenizer, record["prompt"])
  completion_ids = encode_completion(tokenizer, record["completion"])
  return TokenizedExample(
      tokens_T=np.asarray(prompt_ids + completion_ids, dtype=np.int32),
      loss_mask_T=np.asarray([0] * len(prompt_ids) + [1] * len(completion_ids), dtype=np.int32),
      source=record.get("source"))


def encode_records(tokenizer: Any, records: list[Mapping[str, str]], *,
                   max_unknown_fraction: float = 0.5) -> list[TokenizedExample]:
  """`encode_record` over a list. Records with text the tokenizer maps to its unknown token are counted: a warning
  names how many and the first; more than `max_unknown_fraction` of the records is an error (wrong tokenizer?)."""
  examples = [encode_record(tokenizer, r) for r in records]
  check_unknown(tokenizer, [e.tokens_T for e in examples], records, max_unknown_fraction=max_unknown_fraction)
  return examples


def check_unknown(tokenizer: Any, token_rows: list[np.ndarray], records: list[Mapping[str, Any]], *,
                  max_unknown_fraction: float = 0.5) -> None:
  """Warns (or, past `max_unknown_fraction` of the records, raises) when encoded records hold the unknown token."""
  unk = getattr(tokenizer, "unk_token_id", None)
  if unk is None or not records:
    return
  hit = [i for i, tokens in enumerate(token_rows) if np.any(np.asarray(tokens) == unk)]
  if not hit:
    return
  where = records[hit[0]].get("source", f"record {hit[0]}")
  message = (f"{len(hit)} of {len(records)} records contain text the tokenizer maps to its unknown token "
             f"{tokenizer.unk_token!r} (first: {where}: {str(records[hit[0]])[:120]})")
  if len(hit) > max_unknown_fraction * len(records):
    raise JaxpostError(f"{message}; more than max_unknown_fraction={max_unknown_fraction}: is it the right tokenizer?")
  warnings.warn(message, stacklevel=3)
