"""Logits of jaxpost's decoder against `transformers` on the same random checkpoints."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import jaxpost.models as jm
from jaxpost.models import dms
from tests.models.hf_reference import build_hf_model, hf_logits

MODEL_TYPES = ("llama", "qwen2", "qwen3")
TOL = 1e-4


@pytest.fixture(scope="module", params=MODEL_TYPES)
def checkpoint(request, tmp_path_factory):
  hf_model = build_hf_model(request.param)
  directory = tmp_path_factory.mktemp(request.param)
  hf_model.save_pretrained(directory)
  return hf_model, jm.from_pretrained(str(directory)), directory


def test_config_is_read_faithfully(checkpoint):
  hf_model, ours, _ = checkpoint
  assert ours.cfg.model_type == hf_model.config.model_type
  assert ours.cfg.tie_embeddings == hf_model.config.tie_word_embeddings
  assert jm.param_count(ours.cfg) == sum(p.numel() for p in hf_model.parameters())


def test_logits_match_on_right_padded_batch(checkpoint):
  hf_model, ours, _ = checkpoint
  rng = np.random.RandomState(0)
  lengths = np.array([12, 7, 3])
  tokens = rng.randint(0, 97, (3, 12))
  mask = (np.arange(12)[None] < lengths[:, None]).astype(np.int64)
  tokens = tokens * mask
  expected = hf_logits(hf_model, tokens, attention_mask=mask)
  got = np.asarray(ours(tokens, segment_ids=mask))
  valid = mask.astype(bool)
  assert np.abs(expected).max() > 1.0  # logits far from zero, so the tolerance is meaningful
  np.testing.assert_allclose(got[valid], expected[valid], atol=TOL, rtol=0)


def test_packed_rows_match_each_segment_alone(checkpoint):
  hf_model, ours, _ = checkpoint
  rng = np.random.RandomState(1)
  lengths = [5, 8, 3]
  segments = [rng.randint(0, 97, (n,)) for n in lengths]
  row = np.concatenate(segments + [np.zeros(2, int)])[None]
  segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(2, int)])[None]
  positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(2, int)])[None]
  got = np.asarray(ours(row, positions=positions, segment_ids=segment_ids))[0]
  start = 0
  for seg in segments:
    alone = hf_logits(hf_model, seg[None])[0]
    np.testing.assert_allclose(got[start:start + len(seg)], alone, atol=TOL, rtol=0)
    start += len(seg)


def test_save_pretrained_round_trips_through_transformers(checkpoint, tmp_path):
  _, ours, _ = checkpoint
  jm.save_pretrained(ours, str(tmp_path))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  tokens = np.random.RandomState(2).randint(0, 97, (2, 9))
  np.testing.assert_allclose(hf_logits(reloaded, tokens), np.asarray(ours(tokens)), atol=TOL, rtol=0)


def test_sharded_checkpoint_loads(checkpoint, tmp_path):
  hf_model, ours, _ = checkpoint
  hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  tokens = np.random.RandomState(3).randint(0, 97, (1, 6))
  np.testing.assert_allclose(np.asarray(jm.from_pretrained(str(tmp_path))(tokens)), np.asarray(ours(tokens)),
                             atol=1e-6, rtol=0)


def test_our_sharded_save_reloads_exactly(checkpoint, tmp_path):
  _, ours, _ = checkpoint
  jm.save_pretrained(ours, str(tmp_path), max_shard_bytes=30_000)
  assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
  tokens = np.random.RandomState(4).randint(0, 97, (1, 6))
  np.testing.assert_array_equal(np.asarray(jm.from_pretrained(str(tmp_path))(tokens)), np.asarray(ours(tokens)))


def test_dms_model_round_trips_with_its_settings_and_adapter(checkpoint, tmp_path):
  """A DMS retrofit saves its settings and adapter tensors; reloading gives the same evicting model, and
  transformers still reads the base model (the extra key and tensors are ignored there)."""
  _, ours, _ = checkpoint
  cfg = ours.cfg.replace(dms=jm.DMSConfig(variant="adapter", window=2))
  dms_model = jm.Decoder(cfg, rngs=nnx.Rngs(5))
  nnx.update(dms_model, jax.tree.map(lambda x: x + 0.1, nnx.state(dms_model, nnx.Param)))  # nonzero adapter too
  jm.save_pretrained(dms_model, str(tmp_path))
  reloaded = jm.from_pretrained(str(tmp_path))
  assert reloaded.cfg.dms == cfg.dms
  tokens = np.random.RandomState(5).randint(1, 97, (2, 12))
  evicting = lambda m: dms.forward(m, tokens, mode="hard")[0]
  np.testing.assert_array_equal(np.asarray(evicting(reloaded)), np.asarray(evicting(dms_model)))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  np.testing.assert_allclose(hf_logits(theirs, tokens), np.asarray(dms_model(tokens)), atol=TOL, rtol=0)
