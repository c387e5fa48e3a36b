"""Prints, as JSON, the example ids of this process's first two SFT batches, built the way the experiments build
their iterators (process index and count from jax): `tests/train/test_multihost.py` checks the shares."""

import json
import sys

import jax
import numpy as np

from jaxpost import data
from jaxpost.train import initialize_distributed


def main() -> None:
  initialize_distributed()
  examples = [data.TokenizedExample(tokens_T=np.full(3, i, np.int32), loss_mask_T=np.ones(3, np.int32))
              for i in range(40)]
  iterator = data.sft_iterator(examples, data.IteratorConfig(batch_size=8, seed=3), seq_len=4)
  batches = [next(iterator)["tokens"][:, 0].tolist() for _ in range(2)]
  print(json.dumps({"process": jax.process_index(), "batches": batches}), file=sys.stdout, flush=True)


if __name__ == "__main__":
  main()
