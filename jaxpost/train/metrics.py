"""Per-step metrics: `workdir/metrics.jsonl` (each line with its wall-clock `time`), TensorBoard (tensorboardX) and a
tqdm progress bar.

On resume from step S, lines for steps after S (written by the interrupted run after its last checkpoint) are
dropped from metrics.jsonl and TensorBoard purges its events after S, so every step appears exactly once.
Only process 0 writes.
"""

import json
import math
import os
import time

import jax
import tensorboardX
import tqdm

from jaxpost.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  """The complete lines of `workdir/metrics.jsonl` (a line cut short by a crash is ignored)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def _truncate_after(workdir: str, step: int) -> None:
  kept = [r for r in read_metrics(workdir) if r["step"] <= step]
  path = os.path.join(workdir, METRICS_FILE)
  write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsWriter:
  """Appends one record per step; `start_step` is the step training resumes from (0 for a fresh run)."""

  def __init__(self, workdir: str, *, start_step: int, total_steps: int, progress: bool = True):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_after(workdir, start_step)
    self._file = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                          purge_step=start_step + 1)
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not progress, dynamic_ncols=True,
                          unit="step")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Records the metrics of `step` (the step count after the update) everywhere."""
    if not self.enabled:
      return
    record = {"step": step, "time": round(time.time(), 3), **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for name, value in record.items():
      if name not in ("step", "time") and math.isfinite(value):
        self._tb.add_scalar(name, value, step)
    postfix = {"loss": f"{record.get('loss', math.nan):.4f}"}
    if "tokens_per_s" in record:
      postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    self._tb.close()
    self._bar.close()
