"""One optimisation step: loss and gradients (accumulated over micro-batches), then the AdamW update.

The loss interface is `loss_fn(model, batch, rng) -> (loss, metrics)`. The library's losses are counted
(`jaxpost.losses.counts`): their normalisers are computed once from the whole batch's masks, each micro-batch
gets its share, and the micro-batch results are averaged with equal weights, which is exact for the loss, the
gradients and token-mean metrics, composed or not. Another loss that is a mean over tokens may report its
denominator as `metrics["loss_denominator"]`: micro-batch results are then combined as
sum_m(den_m * x_m) / sum_m(den_m) (`loss_denominator` itself is summed). Without either, the micro-batches are
averaged with equal weights (exact for losses that are means over equal-sized examples).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpost.losses.counts import COUNTS, split_counts
from jaxpost.train.partition import BATCH_AXES, batch_sharding, traced_on
from jaxpost.train.state import OptimizerConfig, TrainState, make_optimizer, make_schedule, trainable_mask

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, Metrics]]
DENOMINATOR = "loss_denominator"


def _loss_and_grads(params, batch: Batch, rng, *, graphdef, loss_fn: LossFn):
  def loss_of(p):
    return loss_fn(nnx.merge(graphdef, p), batch, rng)

  (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  return loss, metrics, grads


def _split_microbatches(batch: Batch, num_microbatches: int, mesh: Mesh | None) -> Batch:
  """[B, ...] -> [M, B/M, ...], micro-batch m taking rows m, m+M, ... so each stays spread over the batch shards."""

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}")
    x = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES)))
    return x

  return jax.tree.map(split, batch)


def accumulate_gradients(params, batch: Batch, rng, *, graphdef, loss_fn: LossFn, num_microbatches: int = 1,
                         mesh: Mesh | None = None):
  """(loss, metrics, grads) of the whole batch, computed `num_microbatches` rows-slices at a time (lax.scan)."""
  compute = functools.partial(_loss_and_grads, graphdef=graphdef, loss_fn=loss_fn)
  if num_microbatches == 1:
    return compute(params, batch, rng)
  counts = split_counts(loss_fn.counts(batch), num_microbatches) if hasattr(loss_fn, "counts") else None
  with_counts = lambda microbatch: microbatch if counts is None else {**microbatch, COUNTS: counts}
  micro = _split_microbatches(batch, num_microbatches, mesh)

  def body(acc, xs):
    microbatch, index = xs
    loss, metrics, grads = compute(params, with_counts(microbatch), jax.random.fold_in(rng, index))
    one = jnp.ones((), jnp.float32)
    weight = one if counts is not None else metrics.get(DENOMINATOR, one).astype(jnp.float32)
    weighted = jax.tree.map(lambda x: x * weight, (loss, metrics, grads))
    return jax.tree.map(jnp.add, acc, (weighted, weight)), None

  first = jax.tree.map(lambda x: x[0], micro)
  out_shapes = jax.eval_shape(compute, params, with_counts(first), rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.result_type(s.dtype, jnp.float32)), out_shapes)
  init = (zeros, jnp.zeros((), jnp.float32))
  ((loss, metrics, grads), total), _ = jax.lax.scan(body, init, (micro, jnp.arange(num_microbatches)))
  total_safe = jnp.where(total > 0, total, 1.0)
  loss, metrics = jax.tree.map(lambda x: x / total_safe, (loss, metrics))
  grads = jax.tree.map(lambda g, p: (g / total_safe).astype(p.dtype), grads, params)
  if DENOMINATOR in metrics:
    metrics[DENOMINATOR] = total
  return loss, metrics, grads


def train_step(state: TrainState, batch: Batch, *, graphdef, loss_fn: LossFn, optimizer: OptimizerConfig,
               num_microbatches: int = 1, mesh: Mesh | None = None) -> tuple[TrainState, Metrics]:
  """One AdamW step on `batch`; metrics are the loss's own plus loss, grad_norm (trainable params) and lr."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  loss, metrics, grads = accumulate_gradients(state.params, batch, rng, graphdef=graphdef, loss_fn=loss_fn,
                                              num_microbatches=num_microbatches, mesh=mesh)
  trained = jax.tree.leaves(trainable_mask(optimizer, grads))
  grad_norm = optax.tree.norm([g for g, t in zip(jax.tree.leaves(grads), trained) if t])
  updates, opt_state = make_optimizer(optimizer).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "learning_rate": make_schedule(optimizer)(state.step)}
  return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def make_train_step(*, graphdef, loss_fn: LossFn, optimizer: OptimizerConfig, mesh: Mesh, state_shardings,
                    num_microbatches: int = 1) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """`train_step` jitted with explicit in/out shardings and the state donated; call it as `step(state, batch)`."""
  step = functools.partial(train_step, graphdef=graphdef, loss_fn=loss_fn, optimizer=optimizer,
                           num_microbatches=num_microbatches, mesh=mesh)
  replicated = NamedSharding(mesh, P())
  return jax.jit(traced_on(mesh, step), in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
