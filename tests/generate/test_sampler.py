"""The sampler end to end: greedy parity with `transformers`, exact log-probs, stopping, keys and compilations."""

import dataclasses

import jax
import numpy as np
import pytest
import tokenizers
import torch

import jaxpost.models as jm
from jaxpost.generate import SamplingConfig, decode_completions, generate, left_pad, sampler
from tests.generate.helpers import log_softmax, reference_probs, teacher_forced_logits, tiny_model
from tests.models.hf_reference import build_hf_model

_EVENTS = []
jax.monitoring.register_event_duration_secs_listener(lambda event, duration, **kw: _EVENTS.append(event))
_COMPILE = "/jax/core/compile/backend_compile_duration"
_TRACE = "/jax/core/compile/jaxpr_trace_duration"

PROMPTS = [[5, 17, 3, 88, 41, 9, 60, 2, 33], [71, 6, 12, 50, 8], [29, 94]]  # mixed lengths, one batch
N_NEW = 64


@pytest.fixture(scope="module", params=("llama", "qwen3"))
def models(request, tmp_path_factory):
  hf_model = build_hf_model(request.param)
  directory = tmp_path_factory.mktemp(request.param)
  hf_model.save_pretrained(directory)
  return hf_model, jm.from_pretrained(str(directory))


def _hf_greedy(hf_model, tokens, mask, *, stop_ids=None):
  with torch.no_grad():
    out = hf_model.generate(torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                            do_sample=False, max_new_tokens=N_NEW, pad_token_id=0, eos_token_id=stop_ids,
                            output_scores=True, return_dict_in_generate=True)
  completion = out.sequences[:, tokens.shape[1]:].numpy()
  return completion, torch.stack(out.scores, dim=1).numpy()


def test_greedy_matches_transformers_generate(models):
  hf_model, ours = models
  tokens, mask = left_pad(PROMPTS)
  expected, hf_logits = _hf_greedy(hf_model, tokens, mask)
  rollout = generate(ours, tokens, mask, cfg=SamplingConfig(completion_len=N_NEW, temperature=0.0))
  assert expected.shape == (3, N_NEW) and len(set(expected[0].tolist())) > 3  # a real, non-constant continuation
  np.testing.assert_array_equal(np.asarray(rollout.completion_tokens), expected)
  np.testing.assert_array_equal(np.asarray(rollout.lengths), [N_NEW] * 3)
  assert np.asarray(rollout.completion_mask).all() and not np.asarray(rollout.stopped).any()
  hf_logps = np.take_along_axis(log_softmax(hf_logits), expected[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(rollout.logps), hf_logps, atol=1e-4)


def test_greedy_stops_like_transformers(models):
  hf_model, ours = models
  tokens, mask = left_pad(PROMPTS)
  free_run, _ = _hf_greedy(hf_model, tokens, mask)
  stop_ids = (int(free_run[0, 10]), int(free_run[1, 25]))  # row 0 stops by step 10, row 1 by step 25
  expected, _ = _hf_greedy(hf_model, tokens, mask, stop_ids=list(stop_ids))
  cfg = SamplingConfig(completion_len=N_NEW, temperature=0.0, stop_ids=stop_ids)
  rollout = generate(ours, tokens, mask, cfg=cfg)
  got = np.asarray(rollout.completion_tokens)
  np.testing.assert_array_equal(got[:, :expected.shape[1]], expected)
  assert not got[:, expected.shape[1]:].any()  # HF stopped early only when every row had stopped
  for row in range(3):
    hits = np.flatnonzero(np.isin(expected[row], stop_ids))
    length = hits[0] + 1 if hits.size else N_NEW
    assert int(rollout.lengths[row]) == length and bool(rollout.stopped[row]) == bool(hits.size)
    np.testing.assert_array_equal(np.asarray(rollout.completion_mask)[row], np.arange(N_NEW) < length)
  assert bool(rollout.stopped[0]) and int(rollout.lengths[0]) <= 11


SAMPLE_CFG = SamplingConfig(completion_len=24, temperature=0.8, top_k=20, top_p=0.9, n=3, stop_ids=(4, 9))
SMALL_PROMPTS = [[3, 8, 1, 30, 2, 7], [11, 5], [40, 41, 42, 43]]


@pytest.fixture(scope="module")
def sampled():
  model = tiny_model(logit_scale=8.0)
  tokens, mask = left_pad(SMALL_PROMPTS)
  return model, generate(model, tokens, mask, cfg=SAMPLE_CFG, rng=jax.random.key(0))


def test_log_probs_equal_teacher_forced_forward(sampled):
  model, rollout = sampled
  logits = teacher_forced_logits(model, rollout)
  tokens, mask = np.asarray(rollout.completion_tokens), np.asarray(rollout.completion_mask).astype(bool)
  lengths = np.asarray(rollout.lengths)
  assert 0 < lengths.min() < lengths.max() <= 24 and np.asarray(rollout.stopped).any()  # some rows stopped
  np.testing.assert_array_equal(mask, np.arange(24)[None] < lengths[:, None])  # ones, then zeros
  expected = np.take_along_axis(log_softmax(logits / 0.8), tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(rollout.logps)[mask], expected[mask], atol=1e-4)
  for row, col in zip(*np.nonzero(mask)):
    probs = reference_probs(logits[row, col], temperature=0.8, top_k=20, top_p=0.9)
    np.testing.assert_allclose(rollout.sampling_logps[row, col], np.log(probs[tokens[row, col]]), atol=1e-4)
  assert not np.asarray(rollout.logps)[~mask].any() and not tokens[~mask].any()
  for row in range(9):
    stops = np.isin(tokens[row, :lengths[row]], SAMPLE_CFG.stop_ids)
    assert stops[:-1].sum() == 0 and stops[-1] == bool(rollout.stopped[row])
  np.testing.assert_array_equal(np.asarray(rollout.prompt_tokens), np.repeat(left_pad(SMALL_PROMPTS)[0], 3, 0))


def test_sampling_is_reproducible_and_rows_do_not_depend_on_the_batch(sampled):
  model, first = sampled
  tokens, mask = left_pad(SMALL_PROMPTS)
  again = generate(model, tokens, mask, cfg=SAMPLE_CFG, rng=jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(again.completion_tokens), np.asarray(first.completion_tokens))
  other = generate(model, tokens, mask, cfg=SAMPLE_CFG, rng=jax.random.key(1))
  assert (np.asarray(other.completion_tokens) != np.asarray(first.completion_tokens)).any()
  samples = np.asarray(first.completion_tokens).reshape(3, 3, 24)
  assert all(len({s.tobytes() for s in group}) == 3 for group in samples)  # the n samples of a prompt differ
  keys = jax.random.split(jax.random.key(2), 3)  # one key per prompt: the batch order must not matter
  order = [2, 0, 1]
  direct = generate(model, tokens, mask, cfg=SAMPLE_CFG, rng=keys)
  permuted = generate(model, tokens[order], mask[order], cfg=SAMPLE_CFG, rng=keys[np.array(order)])
  np.testing.assert_array_equal(np.asarray(permuted.completion_tokens).reshape(3, 3, 24),
                                np.asarray(direct.completion_tokens).reshape(3, 3, 24)[order])


def test_one_compilation_per_shape_and_max_new_tokens_is_an_array(sampled):
  model, full = sampled
  tokens, mask = left_pad(SMALL_PROMPTS)
  start = len(_EVENTS)
  short = generate(model, tokens, mask, cfg=SAMPLE_CFG, rng=jax.random.key(0), max_new_tokens=5)
  per_prompt = generate(model, tokens, mask, cfg=SAMPLE_CFG, rng=jax.random.key(0),
                        max_new_tokens=np.array([2, 24, 7]))
  assert _EVENTS[start:].count(_COMPILE) == 0 and _EVENTS[start:].count(_TRACE) == 0
  full_mask = np.asarray(full.completion_mask)
  for got, limit in ((short, np.full(9, 5)), (per_prompt, np.repeat([2, 24, 7], 3))):
    window = np.arange(24)[None] < limit[:, None]  # the same draws, cut at the limit
    np.testing.assert_array_equal(np.asarray(got.completion_mask), full_mask * window)
    np.testing.assert_array_equal(np.asarray(got.completion_tokens),
                                  np.asarray(full.completion_tokens) * window)
  start = len(_EVENTS)
  generate(model, tokens[:2], mask[:2], cfg=SAMPLE_CFG, rng=jax.random.key(0))  # a new shape: one compilation
  generate(model, tokens[1:], mask[1:], cfg=SAMPLE_CFG, rng=jax.random.key(3))
  assert _EVENTS[start:].count(_COMPILE) == 1


def test_decode_segments_read_a_growing_cache_and_change_nothing(sampled):
  """Three decode loops (each reading only the cache columns filled by its end) against one loop over all of them:
  the same draws and log-probs, with rows stopping in different loops."""
  model, _ = sampled
  tokens, mask = left_pad(SMALL_PROMPTS)
  limits = np.array([96, 40, 70])
  run = lambda segments: generate(model, tokens, mask, rng=jax.random.key(5), max_new_tokens=limits,
                                  cfg=dataclasses.replace(LONG_CFG, decode_segments=segments))
  one, three = run(1), run(3)
  lengths = np.asarray(three.lengths)
  assert lengths.max() > 64 and lengths.min() < 32  # some rows end in the first loop, some run into the last
  for field in ("completion_tokens", "completion_mask", "lengths", "stopped"):
    np.testing.assert_array_equal(np.asarray(getattr(three, field)), np.asarray(getattr(one, field)))
  np.testing.assert_allclose(np.asarray(three.logps), np.asarray(one.logps), atol=1e-6)
  np.testing.assert_allclose(np.asarray(three.sampling_logps), np.asarray(one.sampling_logps), atol=1e-6)
  assert _key_columns_per_loop(model, tokens, mask, LONG_CFG) == [{6 + 32}, {6 + 64}, {6 + 96}]  # prompt width 6
  assert _key_columns_per_loop(model, tokens, mask, dataclasses.replace(LONG_CFG, decode_segments=1)) == [{6 + 96}]


LONG_CFG = SamplingConfig(completion_len=96, temperature=0.8, n=3, stop_ids=(4,), decode_segments=3)


def _key_columns_per_loop(model, tokens, mask, cfg):
  """Cache columns each decode loop of the traced sampler holds (its keys are [N, K, D, S] arrays)."""
  trace = lambda model: sampler._generate.__wrapped__(
      model, tokens, mask, jax.random.key(0), np.full(3, cfg.completion_len, np.int32), cfg=cfg,
      cache_factory=jm.DenseKVCache.create, mesh=None)
  key_shape = (3 * cfg.n, model.cfg.num_kv_heads, model.cfg.head_dim)
  loops = [e for e in jax.make_jaxpr(trace)(model).eqns if e.primitive.name == "while"]
  return [{a.shape[3] for a in loop.params["body_jaxpr"].in_avals if a.shape[:3] == key_shape} for loop in loops]


def test_segment_stops_split_the_completion_into_loops_of_at_least_32_steps():
  assert sampler._segment_stops(128, 4) == [32, 64, 96, 128]
  assert sampler._segment_stops(100, 4) == [34, 67, 100]  # 100 // 32 = 3 loops at most
  assert sampler._segment_stops(63, 4) == [63]
  assert sampler._segment_stops(128, 1) == [128]


def test_decode_completions_with_a_tokenizer(sampled):
  _, rollout = sampled
  vocab = {f"w{i}": i for i in range(53)}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  texts = decode_completions(rollout, tokenizer)
  tokens, lengths = np.asarray(rollout.completion_tokens), np.asarray(rollout.lengths)
  assert texts == [" ".join(f"w{t}" for t in tokens[row, :lengths[row]]) for row in range(9)]


@pytest.mark.parametrize("mask_rows, kwargs, message", [
    ([[1, 1, 0], [1, 1, 1]], {}, "left-padded"),
    ([[0, 0, 0], [1, 1, 1]], {}, "empty"),
    ([[0, 1, 1], [1, 1, 1]], dict(max_new_tokens=9), "max_new_tokens"),
    ([[0, 1, 1], [1, 1, 1]], dict(rng=None), "rng"),
    ([[0, 1, 1], [1, 1, 1]], dict(rng=jax.random.split(jax.random.key(0), 3)), "2 keys"),
])
def test_bad_inputs_raise(mask_rows, kwargs, message):
  mask = np.array(mask_rows, np.int32)
  with pytest.raises(ValueError, match=message):
    generate(None, mask, mask, cfg=SamplingConfig(completion_len=8), **{"rng": jax.random.key(0), **kwargs})
