"""Hugging Face checkpoints (config.json + safetensors) in and out of the NNX decoder."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxpost.errors import CheckpointError
from jaxpost.files import read_json, write_text_atomic
from jaxpost.hosts import is_main, sync, to_host
from jaxpost.models.config import EXECUTION_FIELDS, MODEL_TYPES, ModelConfig, RopeScaling
from jaxpost.models.decoder import Decoder
from jaxpost.models.dms import DMSConfig

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry
_INDEX_FILE = "model.safetensors.index.json"


# ----------------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict, *, source: str = "config.json", dtype: str = "float32",
                   param_dtype: str | None = None) -> ModelConfig:
  """Our config from a Hugging Face config dict (legacy `rope_theta` or transformers-5 `rope_parameters`)."""
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise CheckpointError(f"{source}: model_type {model_type!r} is not supported (supported: {MODEL_TYPES})")
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
    if key not in hf:
      raise CheckpointError(f"{source}: missing key {key!r}")
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
  if hf.get("mlp_bias") or hf.get("use_sliding_window"):
    raise CheckpointError(f"{source}: mlp_bias / use_sliding_window are not supported")
  rope = dict(hf.get("rope_parameters") or {})
  legacy_scaling = hf.get("rope_scaling") or {}
  rope.update({k: v for k, v in legacy_scaling.items() if k not in rope})
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "llama3"):
    raise CheckpointError(f"{source}: rope_type {rope_type!r} is not supported (only 'default' and 'llama3')")
  scaling = None
  if rope_type == "llama3":
    scaling = RopeScaling(factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                          high_freq_factor=rope["high_freq_factor"],
                          original_max_position_embeddings=rope["original_max_position_embeddings"])
  heads = hf["num_attention_heads"]
  eos = hf.get("eos_token_id")
  dms = None
  if hf.get("dms") is not None:
    try:
      dms = DMSConfig(**hf["dms"])
    except (TypeError, ValueError) as error:
      raise CheckpointError(f"{source}: key 'dms' is not a valid DMS config: {error}") from None
  return ModelConfig(
      model_type=model_type,
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      intermediate_size=hf["intermediate_size"],
      rope_theta=float(theta),
      rope_scaling=scaling,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
      qk_norm=model_type == "qwen3",
      max_position_embeddings=hf.get("max_position_embeddings", 32768),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
      dtype=dtype,
      param_dtype=param_dtype or dtype,
      dms=dms,
  )


def config_to_hf(cfg: ModelConfig) -> dict:
  """A config.json dict that `transformers` (4.x legacy keys and 5.x `rope_parameters`) loads."""
  rope = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling is not None:
    s = cfg.rope_scaling
    rope.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings)
  arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[cfg.model_type]
  hf = {
      "architectures": [arch],
      "model_type": cfg.model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "intermediate_size": cfg.intermediate_size,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings,
      "max_position_embeddings": cfg.max_position_embeddings,
      "rope_theta": cfg.rope_theta,
      "rope_parameters": rope,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
      "torch_dtype": cfg.param_dtype,
  }
  if cfg.rope_scaling is not None:
    hf["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
  if cfg.dms is not None:  # our key; transformers keeps unknown keys and ignores them
    hf["dms"] = dataclasses.asdict(cfg.dms)
  if cfg.model_type == "qwen2":
    hf["use_sliding_window"] = False
  else:
    hf["attention_bias"] = cfg.qkv_bias
  return hf


# ----------------------------------------------------------------------------------------------- tensor names


def tensor_map(cfg: ModelConfig) -> dict[str, tuple]:
  """HF tensor name -> our param path. Every tensor has the same layout on both sides (linear weights [out, in])."""
  names: dict[str, tuple] = {"model.embed_tokens.weight": ("embed", "embedding"),
                             "model.norm.weight": ("final_norm", "scale")}
  if not cfg.tie_embeddings:
    names["lm_head.weight"] = ("lm_head", "weight")
  for i in range(cfg.num_layers):
    hf, ours = f"model.layers.{i}.", ("layers", i)
    names[hf + "input_layernorm.weight"] = ours + ("attn_norm", "scale")
    names[hf + "post_attention_layernorm.weight"] = ours + ("mlp_norm", "scale")
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
      names[hf + f"self_attn.{proj}.weight"] = ours + ("attn", proj, "weight")
    if cfg.qkv_bias:
      for proj in ("q_proj", "k_proj", "v_proj"):
        names[hf + f"self_attn.{proj}.bias"] = ours + ("attn", proj, "bias")
    if cfg.qk_norm:
      for norm in ("q_norm", "k_norm"):
        names[hf + f"self_attn.{norm}.weight"] = ours + ("attn", norm, "scale")
    for proj in ("gate_proj", "up_proj", "down_proj"):
      names[hf + f"mlp.{proj}.weight"] = ours + ("mlp", proj, "weight")
    if cfg.dms is not None and cfg.dms.variant == "adapter":  # extra tensors transformers skips when loading
      names[hf + "self_attn.dms_norm.weight"] = ours + ("attn", "dms_norm", "scale")
      names[hf + "self_attn.dms_proj.weight"] = ours + ("attn", "dms_proj", "weight")
      names[hf + "self_attn.dms_proj.bias"] = ours + ("attn", "dms_proj", "bias")
  return names


def _checkpoint_files(directory: str) -> list[str]:
  index_path = os.path.join(directory, _INDEX_FILE)
  if os.path.exists(index_path):
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index_path}: no 'weight_map' dict")
    return sorted(set(weight_map.values()))
  single = os.path.join(directory, "model.safetensors")
  if os.path.exists(single):
    return ["model.safetensors"]
  raise CheckpointError(f"{directory}: no model.safetensors or {_INDEX_FILE}")


def _tensor_slices(directory: str) -> Iterator[tuple[str, str, Any]]:
  """(file name, tensor name, safetensors slice) for every tensor of the checkpoint, one file open at a time; a
  slice reads only the part indexed (`slice[rows, cols]`), or all of it (`slice[...]`)."""
  for file_name in _checkpoint_files(directory):
    path = os.path.join(directory, file_name)
    if not os.path.exists(path):
      raise CheckpointError(f"{directory}/{_INDEX_FILE} names {file_name}, which does not exist")
    try:
      with safe_open(path, framework="flax") as f:
        for name in f.keys():
          yield file_name, name, f.get_slice(name)
    except SafetensorError as error:
      raise CheckpointError(f"{path}: not a readable safetensors file ({error}); is it truncated?") from None


# ----------------------------------------------------------------------------------------------- load / save

Placement = Callable[[tuple, jax.ShapeDtypeStruct], jax.sharding.Sharding]


def is_hf_checkpoint(directory: str) -> bool:
  """Whether `directory` holds a HF checkpoint as `from_pretrained` reads it: config.json and model.safetensors
  or a sharded index."""
  return os.path.exists(os.path.join(directory, "config.json")) and any(
      os.path.exists(os.path.join(directory, name)) for name in ("model.safetensors", _INDEX_FILE))


def hf_directory(directory: str) -> str:
  """`directory` if it is a HF checkpoint (config.json + safetensors); a training workdir's export `directory/hf`
  if that is one (so either may be given: a workdir's own config.json is the experiment's, not a model's);
  otherwise a CheckpointError saying what is missing."""
  export = os.path.join(directory, "hf")
  if not is_hf_checkpoint(directory) and is_hf_checkpoint(export):
    return export
  if os.path.exists(os.path.join(directory, "config.json")):
    return directory
  raise CheckpointError(f"{directory}: no config.json (neither a Hugging Face checkpoint directory nor a workdir "
                        f"with an hf/ export)")


def _dtype_name(dtype) -> str:
  """'float32' for "float32", jnp.float32 or np.dtype("float32")."""
  return dtype if isinstance(dtype, str) else jnp.dtype(dtype).name


def _read_config(directory: str, dtype, param_dtype) -> ModelConfig:
  """The ModelConfig of the HF checkpoint in `directory` (its config.json), computing in `dtype`."""
  path = os.path.join(directory, "config.json")
  return config_from_hf(read_json(path), source=path, dtype=_dtype_name(dtype),
                        param_dtype=None if param_dtype is None else _dtype_name(param_dtype))


def _abstract_decoder(cfg: ModelConfig) -> Decoder:
  """A Decoder of `cfg` with `jax.ShapeDtypeStruct` leaves: the shapes, nothing allocated."""
  return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def from_pretrained(directory: str, *, dtype: str = "float32", param_dtype: str | None = None,
                    placement: Placement | None = None, **execution) -> Decoder:
  """Reads `config.json` and safetensors (single or sharded) into a `Decoder`.

  `execution` sets how the model runs (`remat`, `attention`, `attention_block`, `logits_chunk`; see ModelConfig).
  `directory` may also be a training workdir with an `hf/` export; `dtype` a name or a jnp / numpy dtype.
  `placement(param path, shape)` gives each parameter's sharding: every device's shard is then read from the
  file straight into place (each host reads only what its devices hold; no whole copy anywhere); None: the
  default device. A missing, unexpected or mis-shaped tensor is a `CheckpointError` naming the tensor and both
  shapes.
  """
  unknown = sorted(set(execution) - set(EXECUTION_FIELDS))
  if unknown:
    raise ValueError(f"from_pretrained: {', '.join(unknown)} not settable here; only {', '.join(EXECUTION_FIELDS)}")
  directory = hf_directory(directory)
  cfg = _read_config(directory, dtype, param_dtype).replace(**execution)
  graphdef, state = nnx.split(_abstract_decoder(cfg))
  expected = {path: var for path, var in nnx.to_flat_state(state)}
  names = tensor_map(cfg)
  loaded: dict[tuple, jax.Array] = {}
  for file_name, name, tensor in _tensor_slices(directory):
    if name.endswith(_IGNORED_SUFFIXES) or (cfg.tie_embeddings and name == "lm_head.weight"):
      continue
    if name not in names:
      raise CheckpointError(f"{directory}/{file_name}: unexpected tensor {name!r} for model_type {cfg.model_type}")
    stored = tensor.get_dtype()
    if not (stored.startswith("F") or stored == "BF16"):
      raise CheckpointError(f"{directory}/{file_name}: tensor {name!r} is {stored}; weights must be floating "
                            f"point (a quantised checkpoint needs dequantising first)")
    path = names[name]
    want = tuple(expected[path].shape)
    if tuple(tensor.get_shape()) != want:
      raise CheckpointError(f"{directory}/{file_name}: tensor {name!r} has shape {tuple(tensor.get_shape())}, "
                            f"config.json implies {want}")
    read = lambda index, tensor=tensor: tensor[index].astype(cfg.weight_dtype)
    if placement is None:
      loaded[path] = read(...)
    else:
      target = jax.ShapeDtypeStruct(want, cfg.weight_dtype)
      loaded[path] = jax.make_array_from_callback(want, placement(path, target), read)
  for name, path in names.items():
    if path not in loaded:
      raise CheckpointError(f"{directory}: missing tensor {name!r} (expected shape {tuple(expected[path].shape)})")
  for path, var in expected.items():
    var.set_value(loaded[path])
  return nnx.merge(graphdef, state)


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A model to read from a HF directory, as a trainer's `model_fn`: `Pretrained(d)()` reads it onto the default
  device; trainers instead call `load(placement)`, which reads every shard straight into place, and `abstract()`,
  which builds the shapes from config.json alone."""

  directory: str
  dtype: str = "float32"
  param_dtype: str | None = None

  def __call__(self) -> Decoder:
    return self.load(None)

  def load(self, placement: Placement | None) -> Decoder:
    return from_pretrained(self.directory, dtype=self.dtype, param_dtype=self.param_dtype, placement=placement)

  def abstract(self) -> Decoder:
    """The model with `jax.ShapeDtypeStruct` leaves (nothing read but config.json)."""
    return _abstract_decoder(_read_config(hf_directory(self.directory), self.dtype, self.param_dtype))


def save_pretrained(model: Decoder, directory: str, *, max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes `config.json` and safetensors (sharded with an index above `max_shard_bytes`). On a multi-host run
  every process must call it: the parameters are gathered from all hosts, process 0 writes, the others wait."""
  cfg = model.cfg
  flat = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  tensors = {name: np.ascontiguousarray(to_host(flat[path])) for name, path in tensor_map(cfg).items()}
  if is_main():
    _write_checkpoint(cfg, tensors, directory, max_shard_bytes)
  sync(f"jaxpost save_pretrained {directory}")


def _write_checkpoint(cfg: ModelConfig, tensors: dict[str, np.ndarray], directory: str, max_shard_bytes: int):
  os.makedirs(directory, exist_ok=True)
  shards = _split_into_shards(tensors, max_shard_bytes)
  if len(shards) == 1:
    _atomic_save(shards[0], os.path.join(directory, "model.safetensors"))
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      _atomic_save(shard, os.path.join(directory, file_name))
      weight_map.update({name: file_name for name in shard})
    total = sum(t.nbytes for t in tensors.values())
    write_text_atomic(os.path.join(directory, _INDEX_FILE),
                      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
  write_text_atomic(os.path.join(directory, "config.json"), json.dumps(config_to_hf(cfg), indent=2) + "\n")


def _split_into_shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  shards, current, size = [], {}, 0
  for name, array in tensors.items():
    if current and size + array.nbytes > max_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = array
    size += array.nbytes
  shards.append(current)
  return shards


def _atomic_save(tensors: dict[str, np.ndarray], path: str) -> None:
  """Writes beside the target then renames, so an existing checkpoint is never left half-overwritten."""
  if any(a.dtype == jnp.bfloat16 for a in tensors.values()):
    from safetensors.flax import save_file as save_jax  # numpy has no bfloat16 in safetensors' numpy path
    save_jax({k: jnp.asarray(v) for k, v in tensors.items()}, path + ".tmp", metadata={"format": "pt"})
  else:
    save_file(tensors, path + ".tmp", metadata={"format": "pt"})
  os.replace(path + ".tmp", path)
