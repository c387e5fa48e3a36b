"""The generated key-value lookup task: answers checked by an independent parse, splits, depth, tokenisation."""

import re

import pytest

from jaxpost.data import kv_retrieval as kvr
from jaxpost.data.char_tokenizer import UNK, arith_tokenizer


def _parse(prompt: str) -> tuple[list[tuple[str, str]], str]:
  pairs = re.findall(r"([a-z]+)=([0-9]+);", prompt)
  query = re.fullmatch(r"(?:[a-z]+=[0-9]+;)+\?([a-z]+)=", prompt).group(1)
  return pairs, query


def test_records_answer_the_queried_key():
  cfg = kvr.KVRetrievalConfig(num_pairs=12, key_len=2, value_len=3)
  records = kvr.make_dataset("train", 50, seed=3, cfg=cfg)
  depths = set()
  for record in records:
    pairs, query = _parse(record["prompt"])
    keys = [key for key, _ in pairs]
    assert len(pairs) == 12 and len(set(keys)) == 12
    assert all(len(key) == 2 and len(value) == 3 for key, value in pairs)
    assert record["answer"] == record["completion"] == dict(pairs)[query]
    assert len(record["prompt"]) == cfg.prompt_len
    depths.add(keys.index(query))
  assert len(depths) > 6  # the queried depth varies


def test_fixed_depth_and_determinism():
  cfg = kvr.KVRetrievalConfig(num_pairs=8, depth=0)
  records = kvr.make_dataset("test", 10, seed=1, cfg=cfg)
  assert records == kvr.make_dataset("test", 10, seed=1, cfg=cfg)
  assert records != kvr.make_dataset("test", 10, seed=2, cfg=cfg)
  for record in records:
    pairs, query = _parse(record["prompt"])
    assert pairs[0][0] == query


def test_splits_are_disjoint_by_prompt():
  cfg = kvr.KVRetrievalConfig(num_pairs=2, key_len=1, value_len=1)  # small space: collisions are likely
  train = {r["prompt"] for r in kvr.make_dataset("train", 2000, cfg=cfg)}
  test = {r["prompt"] for r in kvr.make_dataset("test", 200, cfg=cfg)}
  assert train and test and not train & test


def test_every_character_is_one_token_of_the_embedded_tokenizer():
  tokenizer = arith_tokenizer()
  record = kvr.make_dataset("train", 1, cfg=kvr.KVRetrievalConfig(num_pairs=30))[0]
  ids = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
  assert len(ids) == len(record["prompt"]) and tokenizer.convert_tokens_to_ids(UNK) not in ids
  assert tokenizer.decode(ids) == record["prompt"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_pairs=0), "num_pairs must be a positive int"),
    (dict(num_pairs=2, filler=-1), "filler must be an int >= 0"),
    (dict(num_pairs=27, key_len=1), "more distinct keys"),
    (dict(num_pairs=4, depth=4), "depth must be in"),
    (dict(num_pairs=4, min_pairs=5), r"min_pairs must be in \[1, num_pairs=4\]"),
    (dict(num_pairs=4, min_pairs=2, depth=3), "depth 3 needs min_pairs > 3"),
])
def test_bad_config_is_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    kvr.KVRetrievalConfig(**kwargs)


def test_min_pairs_mixes_listing_lengths_within_the_range():
  records = kvr.make_dataset("train", 300, cfg=kvr.KVRetrievalConfig(num_pairs=6, min_pairs=2))
  counts = {len(_parse(r["prompt"])[0]) for r in records}
  assert counts == {2, 3, 4, 5, 6}
  for record in records:
    pairs, query = _parse(record["prompt"])
    assert record["answer"] == dict(pairs)[query]


def test_filler_surrounds_the_pairs_with_letters():
  cfg = kvr.KVRetrievalConfig(num_pairs=3, key_len=1, value_len=2, filler=40)
  records = kvr.make_dataset("train", 100, seed=2, cfg=cfg)
  positions = set()
  for record in records:
    prompt = record["prompt"]
    assert len(prompt) == cfg.prompt_len and re.fullmatch(r"[a-z0-9=;]+\?[a-z]=", prompt)
    pairs = re.findall(r"([a-z])=([0-9]{2});", prompt)  # a key is the one letter before `=`
    assert len(pairs) == 3 and len({key for key, _ in pairs}) == 3
    assert record["answer"] == dict(pairs)[prompt[-2]]
    assert len(re.sub(r"[a-z]=[0-9]{2};", "", prompt[:-3])) == 40  # the haystack: every other character
    positions.add(prompt.index("="))
  assert len(positions) > 20  # the pairs' place in the haystack varies


def test_without_filler_the_seed_is_the_one_used_before_filler_existed():
  import random
  cfg = kvr.KVRetrievalConfig(num_pairs=4, min_pairs=2)
  rng = random.Random("jaxpost.kv_retrieval/test/3/KVRetrievalConfig(num_pairs=4, key_len=2, value_len=3, "
                      "depth=None, min_pairs=2)")
  assert kvr.make_dataset("test", 20, seed=3, cfg=cfg) == kvr.draw_from_split(lambda: kvr._sample(rng, cfg), "test", 20)


def test_bad_split_is_refused():
  with pytest.raises(ValueError, match="split must be one of"):
    kvr.make_dataset("dev", 1)
