"""Batch statistics across the replicas of a `tf.distribute` strategy.

The SCAE loss is a sum of per-example means, which replicas can average, and
of between-example sparsity terms, which are non-linear functions of the
presences summed over the whole batch. For an N-replica step to equal a
1-replica step on the same global batch, those sums span every replica, as in
synchronised batch norm. `ReplicaContext.all_reduce` is differentiable (its
gradient is the all-reduced upstream gradient), so each replica backpropagates
its share of the global term.

Outside a strategy, or with one replica, these are the plain single-device
ops, so the single-device graph (and its rounding) is unchanged.
"""

import tensorflow as tf


def _context():
  """The replica context when there is more than one replica, else None."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return None
  return ctx


def num_replicas() -> int:
  ctx = _context()
  return 1 if ctx is None else ctx.num_replicas_in_sync


def batch_sum(x):
  """Sum over the batch axis (0) of the global batch."""
  total = tf.reduce_sum(x, 0)
  ctx = _context()
  if ctx is None:
    return total
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, total)


def batch_size(x):
  """The global batch size (float32) of a replica's batch `x`."""
  size = tf.cast(tf.shape(x)[0], tf.float32)
  ctx = _context()
  if ctx is None:
    return size
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, size)


def sum_share(local_sum):
  """This replica's share of a loss term that sums over the global batch
  (e.g. `tf.nn.l2_loss`), given its sum over its own examples.

  The training step divides each replica's loss by the number of replicas
  N (its mean terms are local means), so a sum is counted N times here: the
  replicas' shares then add up to the global sum, and so do the gradients.
  """
  n = num_replicas()
  return local_sum if n == 1 else local_sum * float(n)

