"""Two real processes (jax.distributed over localhost, 4 CPU devices each) train like one process with 8 devices,
also when one of them is killed with SIGKILL and both are started again.

Launched exactly as the README's two-process rehearsal: the same command with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set per process.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxpost.models import from_pretrained
from jaxpost.train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT = ["--config.train.total_steps=12", "--config.train.save_every=3", "--config.train.progress=false",
       "--config.num_train=256", "--config.num_eval=8", "--config.batch_size=8", "--config.seq_len=64",
       "--config.eval.every=0", "--config.eval.completion_len=8", "--config.optimizer.learning_rate=3e-4",
       "--config.optimizer.warmup_steps=0"]
GRPO = ["--config.steps=2", "--config.prompts_per_step=4", "--config.group_size=4", "--config.completion_len=12",
        "--config.num_minibatches=1", "--config.num_train=64", "--config.num_eval=4", "--config.eval_every=0",
        "--config.progress=false", "--config.save_every=2", "--config.warmup_steps=0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(tmp_path, devices: int) -> dict:
  return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
          "JAX_COMPILATION_CACHE_DIR": str(tmp_path / f"jax_cache_{devices}"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _one_process(tmp_path, module, workdir, args):
  done = subprocess.run([sys.executable, "-m", module, "--workdir", str(workdir), *args], cwd=ROOT,
                        env=_env(tmp_path, 8), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]


def _start_two(tmp_path, module, workdir, args):
  """The README's rehearsal: the same command twice, with the JAX_* variables of process 0 and 1."""
  port = _free_port()
  return [subprocess.Popen([sys.executable, "-m", module, "--workdir", str(workdir), *args], cwd=ROOT,
                           env={**_env(tmp_path, 4), "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                                "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _two_processes(tmp_path, module, workdir, args):
  procs = _start_two(tmp_path, module, workdir, args)
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  for i, (_, err) in enumerate(outputs):
    assert f"process {i} of 2 (JAX_* environment variables): 4 local devices of 8" in err
  return outputs[0][1]


def _params(hf_dir):
  return jax.tree.map(np.asarray, jax.tree.leaves(from_pretrained(str(hf_dir))))


def test_each_process_reads_its_disjoint_share_of_the_global_batch(tmp_path):
  procs = _start_two(tmp_path, "tests.train.print_shares", tmp_path / "unused", [])
  outputs = [p.communicate(timeout=120) for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs[0][1][-3000:]
  shares = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outputs), key=lambda r: r["process"])
  whole = subprocess.run([sys.executable, "-m", "tests.train.print_shares"], cwd=ROOT, env=_env(tmp_path, 8),
                         capture_output=True, text=True, timeout=120)
  assert whole.returncode == 0, whole.stderr[-3000:]
  for k, global_batch in enumerate(json.loads(whole.stdout.strip().splitlines()[-1])["batches"]):
    first, second = shares[0]["batches"][k], shares[1]["batches"][k]
    assert not set(first) & set(second) and first + second == global_batch


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_processes_train_like_one(tmp_path):
  _one_process(tmp_path, "experiments.sft_arith", tmp_path / "sft_1", SFT)
  # Two processes, process 1 killed with SIGKILL mid-run (process 0 then stuck in a collective, killed too), then
  # the same two commands again: they resume from the last checkpoint and end like the one-process run.
  procs = _start_two(tmp_path, "experiments.sft_arith", tmp_path / "sft_2", SFT)
  deadline = time.time() + 240
  while len(read_metrics(tmp_path / "sft_2")) < 5:
    assert all(p.poll() is None for p in procs) and time.time() < deadline, procs[0].communicate()[1][-3000:]
    time.sleep(0.05)
  procs[1].kill()
  procs[0].kill()
  for p in procs:
    p.communicate()
  assert len(read_metrics(tmp_path / "sft_2")) < 12
  assert "resuming from step" in _two_processes(tmp_path, "experiments.sft_arith", tmp_path / "sft_2", SFT)
  for a, b in zip(_params(tmp_path / "sft_1" / "hf"), _params(tmp_path / "sft_2" / "hf"), strict=True):
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
  assert [r["loss"] for r in read_metrics(tmp_path / "sft_2")] == pytest.approx(
      [r["loss"] for r in read_metrics(tmp_path / "sft_1")], abs=1e-6)

  start = ["--config.checkpoint=" + str(tmp_path / "sft_1" / "hf")]
  _one_process(tmp_path, "experiments.grpo_arith", tmp_path / "grpo_1", GRPO + start)
  _two_processes(tmp_path, "experiments.grpo_arith", tmp_path / "grpo_2", GRPO + start)
  for a, b in zip(_params(tmp_path / "grpo_1" / "hf"), _params(tmp_path / "grpo_2" / "hf"), strict=True):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)

  # The two-process export (gathered, written by process 0) is a checkpoint transformers reads.
  hf_dir = str(tmp_path / "grpo_2" / "hf")
  tokens = np.random.default_rng(0).integers(0, 40, (2, 12))
  ours = np.asarray(from_pretrained(hf_dir)(tokens))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()(torch.as_tensor(tokens)).logits
  np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=1e-5, rtol=0)
