"""Checkpoints: restore onto another mesh, damaged or unfinished checkpoints skipped, HF export."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.models import from_pretrained
from jaxpost.train import (CheckpointConfig, Checkpointer, MeshConfig, OptimizerConfig, abstract_state,
                           create_train_state, export_hf, make_mesh, param_shardings, split_model,
                           train_state_shardings)
from tests.train.helpers import TINY, random_batch, tiny_model

OPT = OptimizerConfig(trainable=r"layers/0/mlp/")
GRAPHDEF, HOST_PARAMS = split_model(tiny_model())


def _state(mesh, step: int):
  params = jax.device_put(HOST_PARAMS, param_shardings(HOST_PARAMS, mesh))
  params = jax.tree.map(lambda x: x + step, params)  # distinct values per saved step
  state = create_train_state(params, optimizer=OPT, mesh=mesh, seed=step)
  return state.replace(step=jnp.asarray(step, jnp.int32))


def _target(mesh):
  return abstract_state(*train_state_shardings(HOST_PARAMS, optimizer=OPT, mesh=mesh))


def test_restore_onto_a_different_mesh(tmp_path):
  saved = _state(make_mesh(MeshConfig(fsdp=4, tensor=2)), step=3)
  checkpointer = Checkpointer(str(tmp_path), CheckpointConfig(save_every=1))
  checkpointer.save(3, saved, {"data": {"index": 3}})
  checkpointer.wait()

  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  state, position = Checkpointer(str(tmp_path), CheckpointConfig()).restore_latest(_target(mesh))
  assert position == {"data": {"index": 3}} and int(state.step) == 3
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state, saved)
  q = state.params["layers"][0]["attn"]["q_proj"]["weight"]
  assert q.sharding.mesh.shape == mesh.shape and {s.data.shape for s in q.addressable_shards} == {(32, 8)}


# A failed Orbax restore leaves background reads whose errors surface after their event loop closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
  mesh = make_mesh(MeshConfig(fsdp=8))
  checkpointer = Checkpointer(str(tmp_path), CheckpointConfig(save_every=1, keep=3))
  for step in (1, 2):
    checkpointer.save(step, _state(mesh, step), {"data": {"index": step}})
  checkpointer.wait()
  checkpointer.close()
  # Damage step 2 the way a full disk would: every data file cut to a few bytes.
  data_files = [f for f in glob.glob(str(tmp_path / "2" / "state" / "**" / "*"), recursive=True)
                if os.path.isfile(f) and "/d/" in f]
  assert data_files
  for f in data_files:
    with open(f, "r+b") as handle:
      handle.truncate(3)
  # An interrupted write leaves only Orbax's temporary directory: it is not a checkpoint.
  os.makedirs(tmp_path / "3.orbax-checkpoint-tmp-1700000000" / "state")

  checkpointer = Checkpointer(str(tmp_path), CheckpointConfig(save_every=1, keep=3))
  assert checkpointer.steps() == [1, 2]
  with pytest.warns(UserWarning, match=r"checkpoint .*/2 is unusable: it"):
    state, position = checkpointer.restore_latest(_target(mesh))
  assert int(state.step) == 1 and position == {"data": {"index": 1}}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state.params, _state(mesh, 1).params)
  assert checkpointer.steps() == [1] and glob.glob(str(tmp_path / "corrupt-2-*"))


@pytest.mark.parametrize("change, message", [
    (dict(intermediate_size=96), r"params/layers/0/mlp/down_proj/weight is \(32, 64\) there, \(32, 96\) here"),
    (dict(qkv_bias=True), r"it has no params/layers/0/attn/k_proj/bias"),
])
def test_checkpoint_of_another_model_is_an_error_and_stays_in_place(tmp_path, change, message):
  mesh = make_mesh(MeshConfig(fsdp=8))
  checkpointer = Checkpointer(str(tmp_path), CheckpointConfig(save_every=1))
  checkpointer.save(1, _state(mesh, 1), {"data": {"index": 1}})
  checkpointer.wait()
  before = sorted(glob.glob(str(tmp_path / "**"), recursive=True))
  _, other_params = split_model(tiny_model(cfg=TINY.replace(**change)))
  other = abstract_state(*train_state_shardings(other_params, optimizer=OPT, mesh=mesh))
  with pytest.raises(ValueError, match=rf"checkpoint .*/1 was written for another model or optimizer \({message}"):
    checkpointer.restore_latest(other)
  assert sorted(glob.glob(str(tmp_path / "**"), recursive=True)) == before
  state, _ = checkpointer.restore_latest(_target(mesh))  # still restorable by the model that wrote it
  assert int(state.step) == 1


def test_no_checkpoint_means_none(tmp_path):
  assert Checkpointer(str(tmp_path), CheckpointConfig()).restore_latest(_target(make_mesh(MeshConfig()))) is None


def test_export_hf_round_trip(tmp_path):
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  state = _state(mesh, step=0)
  export_hf(GRAPHDEF, state.params, str(tmp_path / "hf"))
  loaded = from_pretrained(str(tmp_path / "hf"))
  tokens = random_batch(0)["tokens"]
  np.testing.assert_allclose(loaded(tokens), tiny_model()(tokens), atol=1e-5)
