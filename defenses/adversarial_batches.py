"""The adversarial batches of every defence (paper Algorithm 5).

Every (k + 1)-th batch is adversarial (the paper's k = 1: every second one).
As in the authors' code, a counter starts at 0 once, grows by one per batch
and never resets at an epoch or phase boundary; the batch that brings it to
k + 1 is adversarial and resets it. The counter and the attack's random
generator live in the run's checkpoint, so a resumed run replays the same
adversarial batches.

The adversarial examples are generated inside the compiled training step,
before its gradient tape (`make_train_step(prepare=...)`), by the attack's
`paper_train` preset (5 outer x 30 inner signed-gradient steps, beta 1, alpha
from 100, blurred mask) against the posterior linear probe (PosL) of the
model being trained, with the true labels as the success test. Examples the
attack fails on stay clean.
"""

from typing import NamedTuple

import tensorflow as tf

from attacks import classifiers
from attacks import evasion


class DefenceBatch(NamedTuple):
  """A training batch after the adversarial step.

  images: what the model is fed, G(x) on an adversarial batch, else x.
  labels: the true labels.
  clean: the clean images x.
  adversarial: scalar bool, whether this batch was attacked.
  success_rate, mean_l2: the attack's success rate and the mean L2 of its
    successful examples (0 on a clean batch).
  """
  images: tf.Tensor
  labels: tf.Tensor
  clean: tf.Tensor
  adversarial: tf.Tensor
  success_rate: tf.Tensor
  mean_l2: tf.Tensor


class AdversarialBatches(tf.Module):
  """The `prepare` step of a defence: `(model, (x, y), ctx) -> DefenceBatch`.

  Args:
    attacked: the model to attack, given the step's model (e.g. the student
      of a student-teacher pair); the model itself by default.
    clean_batches: k, the clean batches between two adversarial ones.
    preset, overrides: the attack (`attacks.evasion`); paper_train by
      default, against its target classifier (PosL).
    seed: seeds the attack's random starts p'.
  """

  def __init__(self, model, attacked=lambda model: model, clean_batches=1,
               preset='paper_train', seed=0, name='adversarial_batches',
               **overrides):
    super().__init__(name=name)
    if clean_batches < 0:
      raise ValueError(f'clean_batches must be >= 0, got {clean_batches}.')
    self.period = clean_batches + 1
    config = evasion.get_config(preset, **overrides)
    target = classifiers.make_classifier(attacked(model), config.target)
    self.attack = evasion.CapsuleAttack(target, config)
    self.counter = tf.Variable(
        0, dtype=tf.int64, trainable=False, name='counter',
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.generator = tf.random.Generator.from_seed(seed)

  def __call__(self, model, batch, ctx):
    del model, ctx  # The attack holds its model; its draws are its own.
    images, labels = batch
    self.counter.assign_add(1)
    adversarial = tf.equal(self.counter, self.period)

    def attack():
      self.counter.assign(0)
      adv, success, l2 = self.attack.in_graph(images, labels, self.generator)
      hits = tf.cast(success, tf.float32)
      rate = tf.reduce_mean(hits)
      mean_l2 = tf.math.divide_no_nan(
          tf.reduce_sum(tf.where(success, l2, 0.)), tf.reduce_sum(hits))
      return adv, rate, mean_l2

    def clean():
      return images, tf.constant(0.), tf.constant(0.)

    fed, rate, mean_l2 = tf.cond(adversarial, attack, clean)
    return DefenceBatch(tf.stop_gradient(fed), labels, images, adversarial,
                        rate, mean_l2)
