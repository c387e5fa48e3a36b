"""The embedded character-level tokenizer, stored in Hugging Face form so real tokenizers share its code path.

One token per printable ASCII character plus newline, and a few special tokens for a minimal chat template.
`python -m jaxpost.data.char_tokenizer` rewrites the shipped files (a test checks they equal a fresh build).
"""

import json
import os
import pathlib

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

PAD, BOS, EOS, USER, ASSISTANT, SYSTEM, UNK = (
    "<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>", "<|unk|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, USER, ASSISTANT, SYSTEM, UNK)  # ids 0..6, in this order
CHARACTERS = "\n" + "".join(chr(c) for c in range(0x20, 0x7F))  # newline + printable ASCII, ids 7..
ASSET_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "arith_tokenizer"

# Turns are marked by one special token each; an assistant turn ends with <|eos|>.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{- message['content'] -}}"
    "{%- elif message['role'] == 'user' -%}<|user|>{{- message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>{{- message['content'] -}}<|eos|>"
    "{%- else -%}{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def build_tokenizer() -> tokenizers.Tokenizer:
  """Builds the character-level `tokenizers.Tokenizer` (no post-processor: BOS comes from the chat template)."""
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  return tok


def tokenizer_config() -> dict:
  """The `tokenizer_config.json` contents: special-token roles and the chat template."""
  return {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": BOS,
      "eos_token": EOS,
      "pad_token": PAD,
      "unk_token": UNK,
      "extra_special_tokens": [USER, ASSISTANT, SYSTEM],
      "chat_template": CHAT_TEMPLATE,
      "model_max_length": 1024,
      "padding_side": "right",
      "clean_up_tokenization_spaces": False,
  }


def write_tokenizer_files(path: str | os.PathLike) -> None:
  """Writes `tokenizer.json` and `tokenizer_config.json` into `path`, byte-for-byte reproducibly."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / "tokenizer.json").write_text(build_tokenizer().to_str(pretty=True) + "\n", encoding="utf-8")
  (path / "tokenizer_config.json").write_text(
      json.dumps(tokenizer_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def arith_tokenizer():
  """Loads the shipped tokenizer with `transformers.AutoTokenizer` (offline)."""
  import transformers  # Heavy import, only when a tokenizer is actually wanted.

  return transformers.AutoTokenizer.from_pretrained(str(ASSET_DIR), local_files_only=True)


if __name__ == "__main__":
  write_tokenizer_files(ASSET_DIR)
  print(f"wrote {ASSET_DIR} (vocab {build_tokenizer().get_vocab_size()})")
