"""The main job: SFT, then GRPO, then Prefix-RFT, then a DMS retrofit of the tiny model on embedded arithmetic.

  python -m experiments.quickstart --workdir runs/quickstart

Every stage is one of the experiments, run with small settings in its own sub-directory (so a re-run resumes):
sft/ (from scratch, easy task), grpo/ and prefix_rft/ (both from the SFT checkpoint), dms/ (CR 4 retrofit of the
SFT model). Ends with a summary table (held-out accuracy per stage, achieved KV compression) in summary.md; each
stage leaves its PNG plot in its directory.
"""

from __future__ import annotations

import os
import time

import ml_collections

from experiments import dms_retrofit, rl_common, sft_arith
from jaxpost import hosts
from jaxpost.experiment import run_experiment


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.sft_steps = 400
  c.rl_steps = 12
  c.dms_steps_per_cr = 25
  c.num_eval = 256
  c.progress = True
  return c


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  stages, clock = {}, time.perf_counter()

  sft = sft_arith.get_config()
  sft.train.update(total_steps=config.sft_steps, save_every=config.sft_steps, progress=config.progress)
  if sft.optimizer.warmup_steps > config.sft_steps:  # a short smoke run: warm up over a tenth of it
    sft.optimizer.warmup_steps = config.sft_steps // 10
  sft.eval.every, sft.num_eval = config.sft_steps, config.num_eval
  result = sft_arith.main(sft, os.path.join(workdir, "sft"))  # {} on processes other than 0
  stages["SFT (from scratch)"] = {"accuracy": result.get("accuracy")}
  start = os.path.join(workdir, "sft", "hf")

  for method, name in (("grpo", "GRPO"), ("prefix_rft", "Prefix-RFT")):
    rl = rl_common.rl_config(method)
    rl.update(checkpoint=start, steps=config.rl_steps, eval_every=config.rl_steps, save_every=config.rl_steps,
              num_eval=config.num_eval, progress=config.progress)
    rl.prefix.schedule_steps = config.rl_steps
    result = rl_common.run_rl(rl, os.path.join(workdir, method))
    stages[f"{name} (from SFT)"] = {"accuracy": result.get("final_accuracy")}

  dms = dms_retrofit.get_config()
  dms.update(checkpoint=start, crs=(4,), steps_per_cr=config.dms_steps_per_cr, num_eval=config.num_eval,
             vote_samples=(1,))
  results = dms_retrofit.main(dms, os.path.join(workdir, "dms"))
  stages["DMS CR 4 retrofit (of SFT)"] = {"accuracy": results["dms_cr4"]["accuracy"],
                                          "compression": results["dms_cr4"]["compression"]}

  if not hosts.is_main():  # process 0 writes the summary
    return {}
  minutes = (time.perf_counter() - clock) / 60
  lines = ["| stage | held-out accuracy | KV compression |", "|---|---|---|"]
  for stage, r in stages.items():
    compression = f"{r['compression']:.2f}x" if "compression" in r else "1x (dense)"
    lines.append(f"| {stage} | {r['accuracy']:.1%} | {compression} |")
  lines += ["", f"Easy arithmetic, {config.num_eval} held-out problems, greedy decoding; {minutes:.1f} minutes."]
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return stages


if __name__ == "__main__":
  run_experiment(get_config, main)
