"""Inputs that used to pass silently: text the tokenizer cannot encode, sequences past the model's positions."""

import numpy as np
import pytest
from flax import nnx

from jaxpost import data
from jaxpost.errors import JaxpostError
from jaxpost.generate import SamplingConfig, generate
from jaxpost.models import Decoder, presets


def test_unknown_characters_are_counted_then_refused():
  tokenizer = data.arith_tokenizer()
  good = [{"prompt": "1+2=", "completion": "3"} for _ in range(3)]
  bad = {"prompt": "1×2=", "completion": "2", "source": "train.jsonl:7"}  # × is outside its alphabet
  with pytest.warns(UserWarning, match=r"1 of 4 records contain text .* unknown token .*first: train.jsonl:7"):
    examples = data.encode_records(tokenizer, good + [bad])
  assert sum(int(np.sum(e.tokens_T == tokenizer.unk_token_id)) for e in examples) > 0
  with pytest.raises(JaxpostError, match=r"3 of 4 records .*right tokenizer"):
    data.encode_records(tokenizer, good[:1] + [bad] * 3)


def test_positions_past_the_models_range_warn():
  cfg = presets.get("tiny", max_position_embeddings=8)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  with pytest.warns(UserWarning, match=r"a sequence of 12 positions exceeds the model's max_position_embeddings 8"):
    model(np.ones((1, 12), np.int32))
  sampling = SamplingConfig(completion_len=6, temperature=0.0, pad_id=0)
  with pytest.warns(UserWarning, match=r"prompt width \+ completion_len of 10 positions exceeds"):
    generate(model, np.ones((1, 4), np.int32), np.ones((1, 4), np.int32), cfg=sampling)
