"""Checkpoint integrity: flipped bytes are caught by checksums, refusals change nothing on disk, no silent restart."""

import glob
import hashlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.errors import CheckpointError
from jaxpost.train import (CheckpointConfig, Checkpointer, MeshConfig, OptimizerConfig, abstract_state,
                           create_train_state, make_mesh, param_shardings, split_model, train_state_shardings)
from jaxpost.train.checksum import mismatches, tree_checksums
from tests.train.helpers import TINY, tiny_model

OPT = OptimizerConfig()
GRAPHDEF, HOST_PARAMS = split_model(tiny_model())


def _state(mesh, step: int, params=HOST_PARAMS, optimizer=OPT):
  params = jax.device_put(params, param_shardings(params, mesh))
  params = jax.tree.map(lambda x: x + step, params)
  state = create_train_state(params, optimizer=optimizer, mesh=mesh, seed=step)
  return state.replace(step=jnp.asarray(step, jnp.int32))


def _target(mesh, params=HOST_PARAMS, optimizer=OPT):
  return abstract_state(*train_state_shardings(params, optimizer=optimizer, mesh=mesh))


def _save(directory, mesh, steps):
  checkpointer = Checkpointer(str(directory), CheckpointConfig(save_every=1, keep=5))
  for step in steps:
    checkpointer.save(step, _state(mesh, step), {"data": {"index": step}})
  checkpointer.wait()
  checkpointer.close()


def _digests(directory) -> dict[str, str]:
  """sha256 of every file under `directory`, by relative path: the test's proof that nothing changed on disk."""
  out = {}
  for path in sorted(glob.glob(os.path.join(str(directory), "**", "*"), recursive=True)):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_checksums_see_a_one_word_change_and_only_there():
  tree = {"a": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "b": jnp.ones((5,), jnp.bfloat16),
          "c": jnp.arange(3, dtype=jnp.uint32)}
  base = tree_checksums(tree)
  assert mismatches(base, tree_checksums(jax.tree.map(jnp.copy, tree))) == []
  swapped = dict(tree, a=tree["a"][::-1])  # same words, other order: a plain sum would miss it
  assert mismatches(base, tree_checksums(swapped)) == ["a"]
  flipped = dict(tree, b=tree["b"].at[2].set(jnp.bfloat16(1.0078125)))  # one bf16 mantissa bit
  assert mismatches(base, tree_checksums(flipped)) == ["b"]
  assert mismatches(base, {k: v for k, v in base.items() if k != "c"}) == ["c"]


def test_arrays_that_differ_from_their_checksums_are_set_aside(tmp_path):
  mesh = make_mesh(MeshConfig(fsdp=8))
  _save(tmp_path, mesh, (1, 2))
  # Step 2's array data replaced by step 1's: every file is well formed, only the values are wrong.
  shutil.rmtree(tmp_path / "2" / "state")
  shutil.copytree(tmp_path / "1" / "state", tmp_path / "2" / "state")
  checkpointer = Checkpointer(str(tmp_path), CheckpointConfig())
  with pytest.warns(UserWarning, match=r"/2 is unusable: its arrays do not match their checksums \(params/"):
    state, position = checkpointer.restore_latest(_target(mesh))
  assert int(state.step) == 1 and position == {"data": {"index": 1}}
  assert checkpointer.steps() == [1] and glob.glob(str(tmp_path / "corrupt-2-*"))


def test_nothing_usable_is_a_refusal_not_a_silent_restart(tmp_path):
  mesh = make_mesh(MeshConfig(fsdp=8))
  _save(tmp_path, mesh, (1,))
  for path in glob.glob(str(tmp_path / "1" / "**" / "_METADATA"), recursive=True):
    with open(path, "w") as f:
      f.write("{garbled")
  with pytest.warns(UserWarning, match="/1 is unusable"):
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*1 damaged one\(s\).*--config.restart=true"):
      Checkpointer(str(tmp_path), CheckpointConfig()).restore_latest(_target(mesh))


@pytest.mark.parametrize("what, message", [
    ("model", r"params/layers/0/mlp/down_proj/weight is \(32, 64\) there, \(32, 96\) here"),
    ("dtype", r"params/embed/embedding is float32 there, bfloat16 here"),
    ("optimizer", r"opt_state"),
])
def test_a_fresh_checkpointer_refuses_another_state_and_changes_nothing(tmp_path, what, message):
  mesh = make_mesh(MeshConfig(fsdp=8))
  _save(tmp_path, mesh, (1, 2))
  before = _digests(tmp_path)
  params, optimizer = HOST_PARAMS, OPT
  if what == "model":
    params = split_model(tiny_model(cfg=TINY.replace(intermediate_size=96)))[1]
  elif what == "dtype":
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), HOST_PARAMS)
  else:
    optimizer = OptimizerConfig(trainable=r"layers/0/mlp/")
  with pytest.raises(CheckpointError, match=message):
    Checkpointer(str(tmp_path), CheckpointConfig()).restore_latest(_target(mesh, params, optimizer))
  assert _digests(tmp_path) == before


def test_a_clean_resume_warns_nothing(tmp_path, recwarn):
  mesh = make_mesh(MeshConfig(fsdp=8))
  _save(tmp_path, mesh, (1,))
  state, _ = Checkpointer(str(tmp_path), CheckpointConfig()).restore_latest(_target(mesh))
  jax.tree.map(np.testing.assert_array_equal, state, _state(mesh, 1))
  assert not [str(w.message) for w in recwarn.list]
