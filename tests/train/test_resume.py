"""A run killed with SIGKILL and started again with the same command ends exactly like an uninterrupted run."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from jaxpost.train import (CheckpointConfig, Checkpointer, MeshConfig, OptimizerConfig, abstract_state, make_mesh,
                           read_metrics, split_model, train_state_shardings)
from tests.train.helpers import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL = 24


def _command(workdir, *overrides):
  return [sys.executable, "-m", "tests.train.tiny_experiment", "--workdir", str(workdir), *overrides]


def _final_state(workdir, total=TOTAL):
  _, params = split_model(tiny_model())
  optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=3, total_steps=total)
  target = abstract_state(*train_state_shardings(params, optimizer=optimizer, mesh=make_mesh(MeshConfig())))
  checkpointer = Checkpointer(str(workdir / "checkpoints"), CheckpointConfig())
  assert checkpointer.steps()[-1] == total
  return checkpointer.restore_latest(target)


def test_sigkill_then_same_command_resumes_exactly(tmp_path):
  # The three runs share a compilation cache so that only the first one compiles the step.
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  reference = subprocess.run(_command(tmp_path / "reference"), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
  assert reference.returncode == 0, reference.stderr[-3000:]
  # The same command each time; slow data (0.2 s per batch) leaves time to kill it in the middle.
  killed = subprocess.Popen(_command(tmp_path / "resumed", "--config.data_delay=0.2"), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while len(read_metrics(tmp_path / "resumed")) < 10:
    assert killed.poll() is None and time.time() < deadline, killed.stdout.read()
    time.sleep(0.1)
  os.kill(killed.pid, signal.SIGKILL)
  killed.wait()
  steps_at_kill = len(read_metrics(tmp_path / "resumed"))
  assert 10 <= steps_at_kill < TOTAL
  resumed = subprocess.run(_command(tmp_path / "resumed", "--config.data_delay=0.2"), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stderr

  (ref_state, ref_position), (state, position) = _final_state(tmp_path / "reference"), _final_state(
      tmp_path / "resumed")
  assert ref_position == position == {"data": {"index": TOTAL}}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), state, ref_state)
  records, ref_records = read_metrics(tmp_path / "resumed"), read_metrics(tmp_path / "reference")
  assert [r["step"] for r in records] == list(range(1, TOTAL + 1))
  np.testing.assert_allclose([r["loss"] for r in records], [r["loss"] for r in ref_records], atol=1e-6)


def _run(workdir, env, *overrides):
  return subprocess.run(_command(workdir, "--config.total_steps=12", *overrides), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _digests(directory) -> dict[str, str]:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def test_other_models_change_nothing_and_a_garbled_newest_checkpoint_resumes_from_the_previous(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  reference = _run(tmp_path / "reference", env)
  assert reference.returncode == 0, reference.stderr[-3000:]
  shutil.copytree(tmp_path / "reference", tmp_path / "garbled")
  # Another model: refused in one line, and every file stays byte-identical.
  before = _digests(tmp_path / "garbled")
  other = _run(tmp_path / "garbled", env, "--config.intermediate_size=96")
  assert other.returncode == 1 and "written for another model" in other.stderr, other.stderr[-3000:]
  assert other.stderr.strip().splitlines()[-1].startswith("error: checkpoint ")
  assert _digests(tmp_path / "garbled") == before

  # 64 garbled bytes in the middle of each array-data file of the newest checkpoint (step 12).
  data_files = [p for p in (tmp_path / "garbled" / "checkpoints" / "12" / "state").rglob("*")
                if p.is_file() and p.parent.name == "d"]
  assert data_files
  for path in data_files:
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 2
    blob[middle:middle + 64] = bytes(b ^ 0xA5 for b in blob[middle:middle + 64])
    path.write_bytes(bytes(blob))
  resumed = _run(tmp_path / "garbled", env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "checkpoints/12 is unusable" in resumed.stderr and "resuming from step 8" in resumed.stderr
  (ref_state, _), (state, _) = _final_state(tmp_path / "reference", 12), _final_state(tmp_path / "garbled", 12)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), state, ref_state)
  assert [r["loss"] for r in read_metrics(tmp_path / "garbled")] == [r["loss"] for r in
                                                                      read_metrics(tmp_path / "reference")]
