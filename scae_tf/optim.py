"""The original's optimiser: TF1 `RMSPropOptimizer` with momentum, and its
learning-rate schedule.

TF1 RMSProp differs from Keras / Sonnet 2 RMSProp, and the early steps of a
run diverge from the reference unless it is matched exactly:

* the mean-square slot starts at ONE (not zero);
* epsilon sits inside the square root;
* the kernel's update order (the textbook form ms = .9 ms + .1 g^2 rounds
  differently); we call that same kernel, `ResourceApplyRMSProp`:
    ms  <- ms + (g * g - ms) * (1 - decay)
    mom <- momentum * mom + (g * lr) / sqrt(ms + eps)
    var <- var - mom
"""

from typing import Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf


def exponential_decay(step, learning_rate, decay_steps=10_000,
                      decay_rate=0.96, decay=True):
  """TF1 `exponential_decay` (not staircase), in float32.

  `decay=False` reproduces upstream `model_config.py`, which computes the
  decayed rate but hands the constant one to the optimiser.
  """
  lr = tf.constant(learning_rate, tf.float32)
  if not decay:
    return lr
  p = tf.cast(step, tf.float32) / tf.constant(decay_steps, tf.float32)
  return lr * tf.pow(tf.constant(decay_rate, tf.float32), p)


class TF1RMSProp(snt.Module):
  """RMSProp with TF1 semantics, slots created up front for `variables`.

  `step` is TF1's `global_step`: the number of updates applied so far; the
  learning rate of an update is taken at the step *before* it.
  """

  def __init__(self, variables: Sequence[tf.Variable], learning_rate=3e-5,
               decay=0.9, momentum=0.9, epsilon=1e-6, decay_steps=10_000,
               decay_rate=0.96, lr_decay=True, batch_size=None,
               name='tf1_rmsprop'):
    """`batch_size`: the batch `epsilon` was derived for, if it was (upstream
    derives it from the batch); the training step then refuses other
    batches."""
    super().__init__(name=name)
    self.learning_rate = learning_rate
    self.decay = decay
    self.momentum = momentum
    self.epsilon = epsilon
    self.decay_steps = decay_steps
    self.decay_rate = decay_rate
    self.lr_decay = lr_decay
    self.batch_size = batch_size
    # Under tf.distribute every replica applies the same all-reduced update
    # to its own copy; the step is counted once.
    self.step = tf.Variable(
        0, dtype=tf.int64, trainable=False, name='step',
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.variables_ = list(variables)
    self.ms = [tf.Variable(tf.ones_like(v), trainable=False, name='ms')
               for v in self.variables_]
    self.mom = [tf.Variable(tf.zeros_like(v), trainable=False, name='mom')
                for v in self.variables_]

  @classmethod
  def for_recipe(cls, variables, recipe):
    """The optimiser of a `scae_tf.recipes.TrainingRecipe`."""
    return cls(variables, learning_rate=recipe.learning_rate,
               decay=recipe.rmsprop_decay, momentum=recipe.rmsprop_momentum,
               epsilon=recipe.epsilon, decay_steps=recipe.lr_decay_steps,
               decay_rate=recipe.lr_decay_rate, lr_decay=recipe.lr_decay,
               batch_size=(recipe.batch_size if recipe.rmsprop_epsilon is None
                           else None))

  def check_batch(self, batch_size):
    """Refuses a batch other than the one epsilon was derived for."""
    if (self.batch_size is not None and batch_size is not None
        and batch_size != self.batch_size):
      raise ValueError(
          f'RMSProp epsilon {self.epsilon:g} is upstream\'s 1e-2 / B^2 for '
          f'batch {self.batch_size}, but the step is fed batch {batch_size}. '
          'Build the optimiser for the batch you feed '
          '(recipe.replace(batch_size=...)).')

  def current_learning_rate(self):
    return exponential_decay(self.step, self.learning_rate, self.decay_steps,
                             self.decay_rate, self.lr_decay)

  def apply(self, gradients):
    """One update; `gradients` align with the constructor's variables.

    Variables whose gradient is None (upstream: `dummy_vote`) are skipped.
    Returns the learning rate used.
    """
    lr = self.current_learning_rate()
    rho = tf.constant(self.decay, tf.float32)
    momentum = tf.constant(self.momentum, tf.float32)
    epsilon = tf.constant(self.epsilon, tf.float32)
    for g, var, ms, mom in zip(gradients, self.variables_, self.ms,
                               self.mom):
      if g is None:
        continue
      if isinstance(g, tf.IndexedSlices):
        g = tf.convert_to_tensor(g)
      # The kernel TF1's RMSPropOptimizer ran: one fused op per variable
      # instead of eight, and the original's rounding.
      tf.raw_ops.ResourceApplyRMSProp(
          var=var.handle, ms=ms.handle, mom=mom.handle, lr=lr, rho=rho,
          momentum=momentum, epsilon=epsilon, grad=g)
    self.step.assign_add(1)
    return lr

  def slot_values_from_tf1(self, var_map, extras):
    """Pairs of (port slot, value) from TF1 `<name>/RMSProp[_1]` entries."""
    by_ref = {v.ref(): i for i, v in enumerate(self.variables_)}
    updates = []
    missing = []
    for name, var in var_map.items():
      i = by_ref.get(var.ref())
      if i is None:
        continue
      ms, mom = extras.get(name + '/RMSProp'), extras.get(name + '/RMSProp_1')
      if ms is None or mom is None:
        missing.append(name)
        continue
      updates += [(self.ms[i], ms), (self.mom[i], mom)]
    if 'global_step' not in extras:
      raise ValueError('The checkpoint has no global_step; it was not '
                       'written with its optimiser state.')
    # TF1 creates no slots for variables without gradient (dummy_vote).
    missing = [n for n in missing if not n.endswith('dummy_vote')]
    if missing:
      raise ValueError('The checkpoint lacks RMSProp slots for: '
                       + ', '.join(sorted(missing)))
    updates.append((self.step, np.int64(extras['global_step'])))
    return updates
