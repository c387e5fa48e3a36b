"""Brute-force references for the baseline caches: plain Python lists of tokens per (sequence, KV head), float64
numpy attention, one query at a time. Written independently of the jitted caches (no slots, no sorting tricks).

Inputs are whole "streams" laid out by cache column: q [B, N, H, D], k and v [B, N, K, D], valid [B, N], and
`steps`, the number of columns fed per step (e.g. [P, 1, 1, ...]: a prefill then decode steps).
"""

from __future__ import annotations

import numpy as np


def _attend(q_D, keys, values):
  """float64 softmax attention of one query head over lists of keys/values; returns (output [D], weights)."""
  scores = np.array([q_D @ key for key in keys]) / np.sqrt(q_D.shape[0])
  weights = np.exp(scores - scores.max())
  weights /= weights.sum()
  return weights @ np.stack(values), weights


def _keep(rule: str, candidates: list[dict], budget: int, last: int, *, sinks: int, recent: int) -> list[dict]:
  """The candidates a rule keeps (each a dict with idx, mass, weight), returned in token order."""
  if rule == "sink_window":
    pinned = [c for c in candidates if c["idx"] < sinks]
    window = [c for c in candidates if c["idx"] >= sinks]
    room = budget - len(pinned)
    kept = pinned + window[len(window) - room:] if room < len(window) else pinned + window
  elif rule == "h2o":
    recent_ones = [c for c in candidates if c["idx"] > last - recent]
    others = sorted((c for c in candidates if c["idx"] <= last - recent), key=lambda c: (-c["mass"], c["idx"]))
    kept = recent_ones + others[:budget - len(recent_ones)]
  elif rule == "tova":
    kept = sorted(candidates, key=lambda c: (-c["weight"], c["idx"]))[:budget]
  else:
    raise ValueError(rule)
  return sorted(kept, key=lambda c: c["idx"])


def eviction_reference(rule, q, k, v, valid, steps, *, budget, sinks=0, recent=0):
  """Outputs [B, N, H, D] (NaN at padding queries) and, after each step, the kept token indices per (row, KV head)."""
  b_size, n, h, d = q.shape
  kv = k.shape[2]
  g = h // kv
  out = np.full(q.shape, np.nan)
  kept_after_step = []
  held = [[[] for _ in range(kv)] for _ in range(b_size)]
  seen = [0] * b_size
  start = 0
  for t in steps:
    columns = range(start, start + t)
    for b in range(b_size):
      new_columns = [c for c in columns if valid[b, c]]
      for kh in range(kv):
        new = [dict(idx=seen[b] + i, key=k[b, c, kh], value=v[b, c, kh], mass=0.0, weight=0.0)
               for i, c in enumerate(new_columns)]
        candidates = held[b][kh] + new
        for i, c in enumerate(new_columns):
          visible = held[b][kh] + new[:i + 1]
          weights_sum = np.zeros(len(visible))
          for head in range(kh * g, (kh + 1) * g):
            out[b, c, head], weights = _attend(q[b, c, head], [x["key"] for x in visible],
                                               [x["value"] for x in visible])
            weights_sum += weights
          for x, w in zip(visible, weights_sum):
            x["mass"] += w
            if i == len(new_columns) - 1:
              x["weight"] = w / g
        last = seen[b] + len(new_columns) - 1
        held[b][kh] = _keep(rule, candidates, budget, last, sinks=sinks, recent=recent)
      seen[b] += len(new_columns)
    kept_after_step.append([[[x["idx"] for x in held[b][kh]] for kh in range(kv)] for b in range(b_size)])
    start += t
  return out, kept_after_step


def quest_reference(q, k, v, valid, steps, *, page_size, pages_read):
  """Outputs [B, N, H, D] (NaN at padding queries; decode steps read only the selected pages) and, per decode step,
  the cache columns read per (row, KV head) (empty for a padding step)."""
  b_size, n, h, d = q.shape
  kv = k.shape[2]
  g = h // kv
  out = np.full(q.shape, np.nan)
  read_per_step = []
  start = 0
  for t in steps:
    step_reads = [[[] for _ in range(kv)] for _ in range(b_size)]
    for b in range(b_size):
      for c in range(start, start + t):
        if not valid[b, c]:
          continue
        seen_columns = [j for j in range(c + 1) if valid[b, j]]
        for kh in range(kv):
          read = seen_columns
          if t == 1:
            read = _quest_columns(q[b, c, kh * g:(kh + 1) * g], k[b, :, kh], seen_columns, c,
                                  page_size=page_size, pages_read=pages_read)
            step_reads[b][kh] = read
          for head in range(kh * g, (kh + 1) * g):
            out[b, c, head], _ = _attend(q[b, c, head], [k[b, j, kh] for j in read], [v[b, j, kh] for j in read])
    if t == 1:
      read_per_step.append(step_reads)
    start += t
  return out, read_per_step


def _quest_columns(q_GxD, keys_NxD, seen_columns, current, *, page_size, pages_read):
  """Columns read by one decode query: the current page plus the best other filled pages by the Quest bound."""
  pages = {}
  for j in seen_columns:
    pages.setdefault(j // page_size, []).append(keys_NxD[j])
  bound = {}
  for p, keys in pages.items():
    lo, hi = np.min(keys, axis=0), np.max(keys, axis=0)
    bound[p] = sum(np.sum(np.maximum(q_D * lo, q_D * hi)) for q_D in q_GxD)
  current_page = current // page_size
  others = sorted((p for p in pages if p != current_page), key=lambda p: (-bound[p], p))
  chosen = {current_page, *others[:pages_read - 1]}
  return [j for j in seen_columns if j // page_size in chosen]
