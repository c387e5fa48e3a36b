"""Independent references for advantages and the GRPO family: a straightforward per-row, per-token torch loop in float64.

Written from the TRL / verl formulas (sequence-level ratio as TRL computes it: one exp(mean lr) per row), not
from jaxpost's code; returns the loss, d loss / d logps, d loss / d entropy and the clip fractions.
"""

import math

import numpy as np
import torch


def _kl(logp, ref, estimator):
  d = ref - logp
  if estimator == "k1":
    return -d
  if estimator == "k2":
    return 0.5 * d * d
  if estimator == "k3":
    return torch.exp(d) - d - 1
  d = torch.clamp(d, -20, 20)
  return torch.clamp(torch.exp(d) - d - 1, -10, 10)


def reference_loss(logps, old_logps, advantages, mask, *, loss_type="grpo", importance_level="token",
                   epsilon_low=0.2, epsilon_high=0.2, clip_ratio_c=None, ref_logps=None, beta=0.0,
                   kl_estimator="k3", max_completion_length=None, entropy=None, entropy_coef=0.0,
                   token_normalizer=None):
  logps_t = torch.tensor(np.asarray(logps), dtype=torch.float64, requires_grad=True)
  entropy_t = None if entropy is None else torch.tensor(np.asarray(entropy), dtype=torch.float64, requires_grad=True)
  old = np.asarray(old_logps, np.float64)
  adv = np.asarray(advantages, np.float64)
  mask = np.asarray(mask).astype(bool)
  b, c = mask.shape
  rows, flags = [], {"low": [], "high": []}
  for i in range(b):
    toks = [t for t in range(c) if mask[i, t]]
    seq_lr = sum(logps_t[i, t] - old[i, t] for t in toks) / max(len(toks), 1)
    terms = []
    for t in toks:
      a = float(adv[i] if adv.ndim == 1 else adv[i, t])
      lr = seq_lr if importance_level == "sequence" else logps_t[i, t] - old[i, t]
      r = torch.exp(lr)
      if loss_type == "cispo":
        term = -torch.clamp(r, max=epsilon_high).detach() * a * logps_t[i, t]
        low, high = False, r.item() > epsilon_high and a > 0
      else:
        term = -torch.minimum(r * a, torch.clamp(r, 1 - epsilon_low, 1 + epsilon_high) * a)
        if clip_ratio_c is not None and a < 0:
          term = torch.minimum(term, torch.tensor(-a * clip_ratio_c, dtype=torch.float64))
        low, high = r.item() < 1 - epsilon_low and a < 0, r.item() > 1 + epsilon_high and a > 0
      if beta:
        term = term + beta * _kl(logps_t[i, t], float(ref_logps[i, t]), kl_estimator)
      terms.append(term)
      flags["low"].append((i, low))
      flags["high"].append((i, high))
    rows.append(terms)
  zero = torch.zeros((), dtype=torch.float64)
  total = sum((sum(r, zero) for r in rows), zero)
  n = sum(len(r) for r in rows)
  if loss_type == "grpo":
    loss = sum((sum(r, zero) / max(len(r), 1) for r in rows), zero) / b
  elif loss_type == "bnpo":
    loss = total / max(n, 1)
  elif loss_type == "dr_grpo":
    loss = total / (b * (max_completion_length or c))
  else:
    loss = total / max(token_normalizer if token_normalizer is not None else n, 1)
  if entropy_coef:
    loss = loss - entropy_coef * sum((entropy_t[i, t] for i in range(b) for t in range(c) if mask[i, t]), zero) / max(n, 1)
  loss.backward()
  fractions = {}
  for name, items in flags.items():
    if importance_level == "token":
      fractions[name] = sum(f for _, f in items) / max(len(items), 1)
    else:  # each non-empty row weighs the same
      per_row = [np.mean([f for j, f in items if j == i]) for i in range(b) if mask[i].any()]
      fractions[name] = float(np.mean(per_row)) if per_row else 0.0
  grad_logps = logps_t.grad.numpy() if logps_t.grad is not None else np.zeros((b, c))
  grad_entropy = None if entropy_t is None or entropy_t.grad is None else entropy_t.grad.numpy()
  assert math.isfinite(loss.item())
  return loss.item(), grad_logps, grad_entropy, fractions


def reference_advantages(rewards, g, estimator, eps, scale):
  """Straightforward loop over groups, written from the formulas."""
  r = torch.tensor(rewards, dtype=torch.float64)
  out = torch.zeros_like(r)
  batch_std = r.std() if len(r) > 1 else torch.tensor(1.0, dtype=torch.float64)
  for start in range(0, len(r), g):
    grp = r[start:start + g]
    for i in range(len(grp)):
      if g == 1:
        baseline = 0.0
      elif estimator == "rloo":
        baseline = (grp.sum() - grp[i]) / (g - 1)
      else:
        baseline = grp.mean()
      a = grp[i] - baseline
      if scale == "group":
        a = a / ((grp.std() if g > 1 else 1.0) + eps)
      elif scale == "batch":
        a = a / (batch_std + eps)
      out[start + i] = a
  return out.numpy()
