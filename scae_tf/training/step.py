"""The training step: a loss function in, one compiled optimiser step out.

Every method (the teacher, AT, AD, HAT, NTAT) trains with this step; what
differs is its loss function

    loss_fn(model, batch, ctx) -> (loss, metrics)

where `model` is whatever the method trains with (the SCAE, or a student and
its frozen teacher), `batch` is (images, labels), and `ctx` a `StepContext`.
The optimiser (`scae_tf.optim.TF1RMSProp`) decides which variables train.
A method may also transform the batch before the loss, outside the gradient
tape (`prepare(model, batch, ctx) -> batch`): the defences generate their
adversarial examples there, so the training gradient never records the
attack's own forward and backward passes.

Loss convention: per-example terms are means over the replica's batch (as
the SCAE loss), between-example terms span the replicas (`scae_tf.replicas`),
and batch sums go through `replicas.sum_share`; the loss is then the global
batch's loss seen from each replica.

Under a `tf.distribute` strategy the step is fed the global batch; replica r
takes the r-th slice, differentiates its share of the loss (loss / N: the
loss's per-example terms are local means, its between-example terms span the
replicas, see `scae_tf.replicas`), the gradients are summed over replicas, and
every replica applies the same update to its copy of the variables.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

#: Scalars the SCAE objective reports (upstream's names).
METRICS = ('loss', 'rec_ll', 'log_prob', 'dynamic_weights_l2',
           'prior_cls_xe', 'posterior_cls_xe', 'prior_within_sparsity_loss',
           'prior_between_sparsity_loss', 'posterior_within_sparsity_loss',
           'posterior_between_sparsity_loss', 'prior_cls_acc',
           'posterior_cls_acc')


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a loss function may depend on besides the weights and the batch.

  step: updates applied before this one (int64 tensor).
  noise: whether the config's presence noise is on.
  seed: a [2] int64 stateless seed of this step (and replica), or None.
    Random numbers drawn from it replay exactly when a run resumes.
  """
  step: tf.Tensor
  noise: bool
  seed: Optional[tf.Tensor]


def scae_terms(model, images, labels, ctx: StepContext, target=None):
  """(loss, metrics, output) of the SCAE objective (upstream
  `ImageAutoencoder._loss`) on `images`, reconstructing `target` (default:
  the images themselves). Only the parts of the graph the loss needs are
  computed (full=False)."""
  out = model.forward(images, labels, target=target, training=ctx.noise,
                      full=False, noise_seed=ctx.seed)
  metrics = {k: getattr(out, k) for k in METRICS[1:]
             if getattr(out, k) is not None}
  return model.loss(out), metrics, out


def scae_objective(model, batch, ctx: StepContext):
  """The SCAE training objective: the default loss function."""
  loss, metrics, _ = scae_terms(model, *batch, ctx)
  return loss, metrics


def make_train_step(model, optimizer, loss_fn=scae_objective, noise=True,
                    seed=None, jit_compile=False, strategy=None,
                    prepare=None):
  """Returns a `tf.function` doing one optimiser step on (images, labels).

  Args:
    model: passed to `loss_fn` as is.
    optimizer: a `TF1RMSProp`; it trains `optimizer.variables_`.
    loss_fn: see the module docstring; the SCAE objective by default.
    noise: the config's presence noise (the fork trains with it; the defences
      and the reference trajectory train without).
    seed: with a seed, the step's randomness is drawn statelessly from
      (seed, step), and a resumed run continues exactly as if uninterrupted.
      Under a strategy each replica folds in its replica id.
    jit_compile: compile the whole step with XLA (one device only).
    strategy: a `tf.distribute.Strategy`; default: the current one. The
      model and the optimiser must have been built in its scope.
    prepare: optional `(model, batch, ctx) -> batch`, run before the tape.

  The step returns the metrics of `loss_fn` and `loss`, computed with the
  weights before the update (as TF1 reported them), the learning rate used
  (`lr`) and the global gradient norm (`grad_global_norm`); averaged over
  replicas.
  """
  # The default strategy runs the step as plain single-device code; any other
  # one (even with one replica) runs it in replica context.
  default = tf.distribute.get_strategy()
  distributed = (tf.distribute.has_strategy()
                 or (strategy is not None and strategy is not default))
  strategy = strategy or default
  n = strategy.num_replicas_in_sync
  if not optimizer.variables_:
    raise ValueError('The optimiser trains no variables.')
  if n > 1 and jit_compile:
    raise ValueError('jit_compile=True is for one device; under a '
                     'tf.distribute strategy compile per op instead.')
  replica = _ReplicaStep(model, optimizer, loss_fn, noise, seed, prepare, n)

  if not distributed:
    @tf.function(jit_compile=jit_compile)
    def train_step(images, labels):
      replica.check(images)
      return replica.run(images, labels)
  else:
    @tf.function
    def train_step(images, labels):
      replica.check(images)
      per_replica = strategy.run(replica.run, args=(images, labels))
      # All-reduced: every replica holds the same values.
      return {k: strategy.experimental_local_results(v)[0]
              for k, v in per_replica.items()}
  return train_step


class _ReplicaStep:
  """What each of the n replicas does in a step (with n = 1, the whole
  step): its slice of the global batch, its seed, the method's `prepare`,
  the gradient of its share of the loss, summed over the replicas, and the
  update. Arguments as `make_train_step`'s."""

  def __init__(self, model, optimizer, loss_fn, noise, seed, prepare, n):
    self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
    self.noise, self.seed, self.prepare, self.n = noise, seed, prepare, n
    self.variables = optimizer.variables_

  def check(self, images):
    """At tracing: the batch must be the optimiser's (its epsilon is tied
    to the batch) and split evenly over the replicas."""
    batch = images.shape[0]
    self.optimizer.check_batch(batch)
    if self.n > 1 and (batch is None or batch % self.n):
      raise ValueError(f'The global batch ({batch}) must split evenly over '
                       f'{self.n} replicas.')

  def run(self, images, labels):
    """The replica's step on the global batch; returns its metrics."""
    replica = None
    if self.n > 1:
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      images, labels = (_replica_slice(t, replica, self.n)
                        for t in (images, labels))
    ctx = StepContext(step=self.optimizer.step, noise=self.noise,
                      seed=self._seed(replica))
    batch = (images, labels)
    if self.prepare is not None:
      batch = self.prepare(self.model, batch, ctx)
    loss, metrics, grads = self._gradients(batch, ctx)
    lr = self.optimizer.apply(grads)
    metrics = dict(metrics)
    metrics['loss'] = loss
    metrics['lr'] = lr
    metrics['grad_global_norm'] = tf.linalg.global_norm(
        [g for g in grads if g is not None])
    return metrics

  def _seed(self, replica):
    """The step's stateless seed, (run seed, step), folded with the replica
    id so that each replica draws its own noise; None without a run seed."""
    if self.seed is None:
      return None
    step_seed = tf.stack([tf.constant(self.seed, tf.int64),
                          self.optimizer.step])
    if replica is not None:
      step_seed = tf.random.experimental.stateless_fold_in(step_seed, replica)
    return step_seed

  def _gradients(self, batch, ctx):
    """(loss, metrics, gradients): the replica differentiates its share of
    the loss (see the module doc), and the shares' gradients are summed."""
    with tf.GradientTape() as tape:
      loss, metrics = self.loss_fn(self.model, batch, ctx)
      share = loss / self.n if self.n > 1 else loss
    grads = tape.gradient(share, self.variables)
    if self.n > 1:
      grads, metrics, loss = _sum_over_replicas(grads, metrics, loss)
    return loss, metrics, grads


def _replica_slice(tensor, replica, n):
  """Replica `replica`'s contiguous 1/n of the global batch."""
  local = tensor.shape[0] // n
  return tf.reshape(tensor, [n, local] + tensor.shape[1:].as_list())[replica]


def _sum_over_replicas(grads, metrics, loss):
  ctx = tf.distribute.get_replica_context()
  present = [i for i, g in enumerate(grads) if g is not None]
  summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                          [tf.convert_to_tensor(grads[i]) for i in present])
  grads = list(grads)
  for i, g in zip(present, summed):
    grads[i] = g
  metrics, loss = ctx.all_reduce(tf.distribute.ReduceOp.MEAN,
                                 (metrics, loss))
  return grads, metrics, loss
