"""Training core: mesh and partition rules, train state and optimizer, the jitted step, checkpoints, metrics, the
supervised loop and the RL loop."""

from jaxpost.train.checkpoint import CheckpointConfig, Checkpointer, abstract_state, export_hf
from jaxpost.train.distributed import DistributedConfig, initialize_distributed
from jaxpost.train.experience import Method, RolloutConfig, make_experience, sample_rollouts
from jaxpost.train.loop import TrainConfig, train
from jaxpost.train.mesh import MESH_AXES, MeshConfig, make_mesh
from jaxpost.train.metrics import METRICS_FILE, MetricsWriter, read_metrics
from jaxpost.train.partition import (BATCH_AXES, DEFAULT_RULES, Rules, batch_sharding, param_shardings, path_str,
                                     shard_batch, spec_for)
from jaxpost.train.rl import RLConfig, rl_train
from jaxpost.train.session import (DataIterator, NonFiniteLossError, Session, check_finite, initial_state,
                                   training_session)
from jaxpost.train.state import (OptimizerConfig, TrainState, create_train_state, decay_mask, init_params,
                                 make_optimizer, make_schedule, split_model, train_state_shardings, trainable_mask)
from jaxpost.train.step import DENOMINATOR, LossFn, accumulate_gradients, make_train_step, train_step

__all__ = [
    "BATCH_AXES", "CheckpointConfig", "Checkpointer", "DEFAULT_RULES", "DENOMINATOR", "DataIterator",
    "DistributedConfig", "LossFn", "MESH_AXES", "METRICS_FILE", "MeshConfig", "Method", "MetricsWriter",
    "NonFiniteLossError", "OptimizerConfig", "RLConfig", "RolloutConfig", "Rules", "Session", "TrainConfig",
    "TrainState", "abstract_state", "accumulate_gradients", "batch_sharding", "check_finite", "create_train_state",
    "decay_mask", "export_hf", "init_params", "initial_state", "initialize_distributed", "make_experience", "make_mesh",
    "make_optimizer", "make_schedule", "make_train_step", "param_shardings", "path_str", "read_metrics", "rl_train",
    "sample_rollouts", "shard_batch", "spec_for", "split_model", "train", "train_state_shardings", "training_session",
    "train_step", "trainable_mask",
]
