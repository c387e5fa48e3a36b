"""Smoke run of the embedded default model: build, save as a HF checkpoint, reload, compare logits."""

import sys
import tempfile

import numpy as np
from flax import nnx

import jaxpost.models as jm


def main() -> int:
  model = jm.Decoder(jm.presets.get("tiny"), rngs=nnx.Rngs(0))
  tokens = np.random.RandomState(0).randint(0, model.cfg.vocab_size, (2, 16))
  with tempfile.TemporaryDirectory() as directory:
    jm.save_pretrained(model, directory)
    reloaded = jm.from_pretrained(directory)
  diff = float(np.abs(np.asarray(model(tokens)) - np.asarray(reloaded(tokens))).max())
  print(f"tiny model: {jm.param_count(model.cfg):,} parameters; HF round trip max |logit diff| = {diff:.2e}")
  return 0 if diff == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
