"""The shipped character tokenizer: reproducible files, one token per character, the chat template."""

import json

import tokenizers

from jaxpost.data import arith, char_tokenizer


def test_shipped_files_equal_a_fresh_build(tmp_path):
  char_tokenizer.write_tokenizer_files(tmp_path)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (tmp_path / name).read_bytes() == (char_tokenizer.ASSET_DIR / name).read_bytes(), name


def test_vocab_and_special_ids():
  tok = char_tokenizer.arith_tokenizer()
  assert len(tok) == 103 == len(char_tokenizer.SPECIAL_TOKENS) + len(char_tokenizer.CHARACTERS)
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 6)
  assert tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<|system|>"]) == [3, 4, 5]
  raw = json.loads((char_tokenizer.ASSET_DIR / "tokenizer.json").read_text())
  assert raw["model"]["vocab"] == {t: i for i, t in enumerate(char_tokenizer.SPECIAL_TOKENS
                                                               + tuple(char_tokenizer.CHARACTERS))}


def test_one_token_per_character_and_round_trip():
  tok = char_tokenizer.arith_tokenizer()
  vocab = tok.get_vocab()
  for r in arith.make_dataset("hard", "train", 20) + [{"prompt": "What is 3 + 4? Say {it}!", "completion": "~"}]:
    for text in (r["prompt"], r["completion"]):
      ids = tok(text, add_special_tokens=False)["input_ids"]
      assert ids == [vocab[ch] for ch in text]  # Independent: character by character through the vocab.
      assert tok.decode(ids) == text
  assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_same_ids_from_the_raw_tokenizers_library():
  raw = tokenizers.Tokenizer.from_file(str(char_tokenizer.ASSET_DIR / "tokenizer.json"))
  hf = char_tokenizer.arith_tokenizer()
  text = "<|bos|><|user|>12+345<|assistant|>5+2+0=07\n=357<|eos|>"
  assert raw.encode(text).ids == hf(text, add_special_tokens=False)["input_ids"]
  assert raw.encode(text).ids[:3] == [1, 3, hf.get_vocab()["1"]]


def test_chat_template():
  tok = char_tokenizer.arith_tokenizer()
  user = [{"role": "user", "content": "12+3"}]
  assert tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False) == (
      "<|bos|><|user|>12+3<|assistant|>")
  full = user + [{"role": "assistant", "content": "=15"}]
  assert tok.apply_chat_template(full, tokenize=False) == "<|bos|><|user|>12+3<|assistant|>=15<|eos|>"
  system = [{"role": "system", "content": "be brief"}] + user
  assert tok.apply_chat_template(system, tokenize=False) == "<|bos|><|system|>be brief<|user|>12+3"
