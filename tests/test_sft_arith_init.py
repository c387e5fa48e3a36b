"""experiments/sft_arith's init_checkpoint: training starts from the given Hugging Face weights, not from scratch."""

import jax
import numpy as np
from flax import nnx

from experiments import sft_arith
from jaxpost import data, models
from tests.generate.helpers import tiny_model


def test_init_checkpoint_is_the_starting_point(tmp_path):
  start = tiny_model(7, vocab=len(data.arith_tokenizer()))
  models.save_pretrained(start, str(tmp_path / "start"))
  config = sft_arith.get_config()  # one step at learning rate 0 and no weight decay: the export is the start
  config.init_checkpoint = str(tmp_path / "start")
  config.num_train, config.num_eval, config.batch_size, config.seq_len = 32, 8, 8, 64  # 8 test devices
  config.train.total_steps, config.train.progress = 1, False
  config.optimizer.learning_rate, config.optimizer.warmup_steps, config.optimizer.weight_decay = 0.0, 0, 0.0
  config.eval.every, config.eval.completion_len, config.eval.batch_size = 1, 4, 8
  sft_arith.main(config, str(tmp_path / "run"))
  expected = jax.tree.leaves(nnx.state(start, nnx.Param))
  exported = jax.tree.leaves(nnx.state(models.from_pretrained(str(tmp_path / "run" / "hf")), nnx.Param))
  assert len(exported) == len(expected)  # the tiny preset (from scratch) has other shapes altogether
  for got, want in zip(exported, expected):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
