"""A bad checkpoint is a one-line error that names the tensor (and both shapes)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file, save_file

import jaxpost.models as jm
from tests.models.hf_reference import build_hf_model


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("good")
  build_hf_model("qwen3").save_pretrained(directory)
  return directory


def _copy_with(good_dir, tmp_path, edit_tensors=None, edit_config=None):
  tensors = load_file(good_dir / "model.safetensors")
  config = json.loads((good_dir / "config.json").read_text())
  if edit_tensors:
    edit_tensors(tensors)
  if edit_config:
    edit_config(config)
  save_file(tensors, tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(config))
  return str(tmp_path)


def _single_line_error(directory, match):
  with pytest.raises(jm.CheckpointError, match=match) as info:
    jm.from_pretrained(directory)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_unknown_model_type(good_dir, tmp_path):
  directory = _copy_with(good_dir, tmp_path, edit_config=lambda c: c.update(model_type="gpt2"))
  _single_line_error(directory, r"config\.json: model_type 'gpt2' is not supported")


def test_missing_tensor(good_dir, tmp_path):
  directory = _copy_with(good_dir, tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  message = _single_line_error(directory, r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'")
  assert "(96, 64)" in message


def test_unexpected_tensor(good_dir, tmp_path):
  directory = _copy_with(good_dir, tmp_path, lambda t: t.update({"model.layers.0.extra.weight": np.ones(3)}))
  _single_line_error(directory, r"model\.safetensors: unexpected tensor 'model\.layers\.0\.extra\.weight'")


def test_shape_mismatch_names_both_shapes(good_dir, tmp_path):
  def shrink(tensors):
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
  directory = _copy_with(good_dir, tmp_path, shrink)
  _single_line_error(directory, r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(16, 64\), "
                                r"config\.json implies \(32, 64\)")


def test_missing_config(tmp_path):
  _single_line_error(str(tmp_path), "no config.json")


def test_unsupported_rope_type(good_dir, tmp_path):
  def yarn(config):
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}
  directory = _copy_with(good_dir, tmp_path, edit_config=yarn)
  _single_line_error(directory, "rope_type 'yarn' is not supported")


def test_invalid_dms_settings(good_dir, tmp_path):
  directory = _copy_with(good_dir, tmp_path, edit_config=lambda c: c.update(dms={"variant": "oracle"}))
  _single_line_error(directory, r"config.json: key 'dms' is not a valid DMS config")


def test_an_integer_tensor_is_refused_not_cast(good_dir, tmp_path):
  def to_int(tensors):
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = tensors[name].astype(np.int32)
  directory = _copy_with(good_dir, tmp_path, to_int)
  _single_line_error(directory, r"tensor 'model\.layers\.0\.mlp\.up_proj\.weight' is I32; weights must be floating")


def test_placed_loading_reads_each_shard_into_place(good_dir):
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"))
  placement = lambda path, target: NamedSharding(
      mesh, P("fsdp") if target.ndim == 2 and target.shape[0] % 4 == 0 else P())
  placed, plain = jm.from_pretrained(str(good_dir), placement=placement), jm.from_pretrained(str(good_dir))
  q = placed.layers[0].attn.q_proj.weight[...]
  assert q.sharding == NamedSharding(mesh, P("fsdp")) and {s.data.shape[0] for s in q.addressable_shards} == {
      q.shape[0] // 4}
  jax.tree.map(np.testing.assert_array_equal, nnx.state(placed), nnx.state(plain))


def test_a_workdir_stands_for_its_hf_export_and_dtypes_may_be_objects(good_dir, tmp_path):
  import shutil
  shutil.copytree(good_dir, tmp_path / "hf")
  (tmp_path / "config.json").write_text(json.dumps({"task": "easy"}))  # an experiment's config, not a model's
  model = jm.from_pretrained(str(tmp_path), dtype=jax.numpy.float32)
  reference = jm.from_pretrained(str(good_dir))
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model), nnx.state(reference))
