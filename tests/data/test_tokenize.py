"""Records to token ids: chat-template and plain paths, loss mask exactly on the completion."""

import pytest

from jaxpost.data import arith, char_tokenizer, tokenize


@pytest.fixture(scope="module")
def tok():
  return char_tokenizer.arith_tokenizer()


def test_chat_template_path(tok):
  record = arith.make_dataset("easy", "train", 1)[0]
  example = tokenize.encode_record(tok, record)
  vocab = tok.get_vocab()
  # Independent: the template's text written out by hand, one id per character.
  prompt_ids = [vocab["<|bos|>"], vocab["<|user|>"]] + [vocab[c] for c in record["prompt"]] + [vocab["<|assistant|>"]]
  completion_ids = [vocab[c] for c in record["completion"]] + [vocab["<|eos|>"]]
  assert example.tokens_T.tolist() == prompt_ids + completion_ids
  assert example.loss_mask_T.tolist() == [0] * len(prompt_ids) + [1] * len(completion_ids)
  assert example.tokens_T.dtype.name == example.loss_mask_T.dtype.name == "int32"
  assert tokenize.encode_prompt(tok, record["prompt"]) == prompt_ids
  assert tok.decode(example.tokens_T[example.loss_mask_T == 1]) == record["completion"] + "<|eos|>"


def test_same_as_rendering_the_whole_conversation(tok):
  for record in arith.make_dataset("medium", "train", 5):
    messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert tokenize.encode_record(tok, record).tokens_T.tolist() == tok(text, add_special_tokens=False)["input_ids"]


def test_plain_concatenation_without_template():
  tok = char_tokenizer.arith_tokenizer()
  tok.chat_template = None
  example = tokenize.encode_record(tok, {"prompt": "7+8", "completion": "=15"})
  vocab = tok.get_vocab()
  assert example.tokens_T.tolist() == [vocab[c] for c in "7+8=15"] + [tok.eos_token_id]
  assert example.loss_mask_T.tolist() == [0, 0, 0, 1, 1, 1, 1]
  assert tokenize.encode_prompt(tok, "7+8") == [vocab[c] for c in "7+8"]


def test_example_shape_check():
  import numpy as np
  with pytest.raises(ValueError, match="must be equal 1-D"):
    tokenize.TokenizedExample(tokens_T=np.zeros(3, np.int32), loss_mask_T=np.zeros(2, np.int32))
