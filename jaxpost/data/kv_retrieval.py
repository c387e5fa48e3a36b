"""A generated long-context key-value lookup task, where KV-cache eviction mistakes show.

A prompt lists `num_pairs` distinct pairs `key=value;` then asks for one key; the completion is its value:

  qf=381;bt=907;za=112;...;mc=640;?bt=    ->    907

Keys are lowercase letters, values digits, so every character is one token of the embedded character tokenizer.
With `filler`, that many random letters (a haystack) surround the pairs, each pair at a uniform place in it; one
pair in filler is the passkey test (`hqzv...k=58;...wd?k=` -> `58`): the value must survive in the cache across the
haystack, a lookup a small model learns in minutes, where a matching of keys among many pairs takes far longer.
The queried pair's depth (its index among the pairs) is uniform, or fixed with `depth` to probe one distance.
With `min_pairs`, each prompt lists a uniform number of pairs in [min_pairs, num_pairs]: a curriculum in one set,
where the short listings teach the lookup that the long ones need.
Each problem belongs to one split by a hash of its prompt, as for the arithmetic tasks.
"""

from __future__ import annotations

import dataclasses
import random
import string

from jaxpost.data.arith import SPLITS, draw_from_split


@dataclasses.dataclass(frozen=True, kw_only=True)
class KVRetrievalConfig:
  """Shape of the problems; a prompt has up to `prompt_len` characters."""

  num_pairs: int = 16
  key_len: int = 2
  value_len: int = 3
  depth: int | None = None  # index of the queried pair; None: uniform over the pairs
  min_pairs: int | None = None  # None: every prompt lists num_pairs pairs
  filler: int = 0  # random letters around the pairs

  def __post_init__(self):
    for name in ("num_pairs", "key_len", "value_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"KVRetrievalConfig: {name} must be a positive int, got {value!r}")
    if not isinstance(self.filler, int) or self.filler < 0:
      raise ValueError(f"KVRetrievalConfig: filler must be an int >= 0, got {self.filler!r}")
    if self.num_pairs > len(string.ascii_lowercase) ** self.key_len:
      raise ValueError(f"KVRetrievalConfig: {self.num_pairs} pairs need more distinct keys than key_len="
                       f"{self.key_len} letters give")
    if self.depth is not None and not 0 <= self.depth < self.num_pairs:
      raise ValueError(f"KVRetrievalConfig: depth must be in [0, num_pairs={self.num_pairs}), got {self.depth}")
    if self.min_pairs is not None and not 1 <= self.min_pairs <= self.num_pairs:
      raise ValueError(f"KVRetrievalConfig: min_pairs must be in [1, num_pairs={self.num_pairs}], "
                       f"got {self.min_pairs}")
    if self.min_pairs is not None and self.depth is not None and self.depth >= self.min_pairs:
      raise ValueError(f"KVRetrievalConfig: depth {self.depth} needs min_pairs > {self.depth}, got {self.min_pairs}")

  @property
  def prompt_len(self) -> int:
    """Characters (= tokens of the character tokenizer) in a prompt of num_pairs pairs (the longest), before any
    chat template."""
    return self.num_pairs * (self.key_len + self.value_len + 2) + self.filler + self.key_len + 2


def _sample(rng: random.Random, cfg: KVRetrievalConfig) -> dict[str, str]:
  num_pairs = cfg.num_pairs if cfg.min_pairs is None else rng.randint(cfg.min_pairs, cfg.num_pairs)
  keys: list[str] = []
  while len(keys) < num_pairs:
    key = "".join(rng.choice(string.ascii_lowercase) for _ in range(cfg.key_len))
    if key not in keys:
      keys.append(key)
  values = ["".join(rng.choice(string.digits) for _ in range(cfg.value_len)) for _ in keys]
  depth = rng.randrange(num_pairs) if cfg.depth is None else cfg.depth
  haystack = "".join(rng.choice(string.ascii_lowercase) for _ in range(cfg.filler))
  cuts = sorted(rng.randint(0, cfg.filler) for _ in keys) if cfg.filler else [0] * num_pairs  # no draws: as before
  pieces = [haystack[start:end] for start, end in zip([0, *cuts], [*cuts, cfg.filler])]
  listing = "".join(piece + f"{key}={value};" for piece, key, value in zip(pieces, keys, values)) + pieces[-1]
  return {"prompt": f"{listing}?{keys[depth]}=", "completion": values[depth], "answer": values[depth]}


def _seed_text(cfg: KVRetrievalConfig) -> str:
  """The config as seed text, without `filler` when it is 0: the sets drawn before filler existed stay the same."""
  return repr(cfg).replace(", filler=0)", ")") if cfg.filler == 0 else repr(cfg)


def make_dataset(split: str, n: int, seed: int = 0,
                 cfg: KVRetrievalConfig = KVRetrievalConfig()) -> list[dict[str, str]]:
  """`n` records {"prompt", "completion", "answer"} from `split`, the same for the same arguments."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = random.Random(f"jaxpost.kv_retrieval/{split}/{seed}/{_seed_text(cfg)}")
  return draw_from_split(lambda: _sample(rng, cfg), split, n)

