"""The sampling configuration: how tokens are chosen and the static completion capacity."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """How the sampler picks tokens. Frozen and hashable: it is a static argument of the jitted sampler.

  `temperature` 0 means greedy (argmax). `top_k` 0 and `top_p` 1 switch those truncations off.
  `completion_len` is the static capacity C: the width of the completion arrays and the cache room reserved
  after the prompt; the per-call `max_new_tokens` (<= C) is an array, so changing it does not recompile.
  `n` samples are drawn per prompt (rows i*n .. i*n+n-1 belong to prompt i). Generation of a row stops after any
  of `stop_ids`; `pad_id` fills the completion after it. The decode runs as up to `decode_segments` loops (each
  at least 32 steps) whose attention reads only the cache columns filled by the loop's end: fewer bytes per step,
  one more compiled copy of the model step per loop; 1 gives a single loop over the whole cache. `prefill_chunk`
  > 0 feeds the prompt that many columns at a time (`lax.scan`), so a compressed cache needs room for its live
  tokens plus one chunk rather than for the whole prompt; the result equals the one-shot prefill.
  """

  completion_len: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  n: int = 1
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  decode_segments: int = 4
  prefill_chunk: int = 0

  def __post_init__(self):
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))  # hashable, also from lists
    if self.completion_len < 1:
      raise ValueError(f"SamplingConfig.completion_len must be >= 1, got {self.completion_len}")
    if self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {self.top_p}")
    if self.n < 1:
      raise ValueError(f"SamplingConfig.n (samples per prompt) must be >= 1, got {self.n}")
    if any(i < 0 for i in self.stop_ids):
      raise ValueError(f"SamplingConfig.stop_ids must be non-negative token ids, got {self.stop_ids!r}")
    if self.pad_id < 0:
      raise ValueError(f"SamplingConfig.pad_id must be >= 0, got {self.pad_id}")
    if self.prefill_chunk < 0:
      raise ValueError(f"SamplingConfig.prefill_chunk must be >= 0 (0 = the whole prompt at once), got "
                       f"{self.prefill_chunk}")
    if self.decode_segments < 1:
      raise ValueError(f"SamplingConfig.decode_segments must be >= 1, got {self.decode_segments}")
    if self.greedy and (self.top_k or self.top_p < 1.0):
      raise ValueError("SamplingConfig: top_k/top_p have no effect with temperature 0 (greedy); leave them off")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0
