"""The defences' losses, as loss functions of the training engine
(`scae_tf.training.make_train_step`), on a `DefenceBatch`.

Eq. 7 (AT, Algorithm 2): the SCAE loss of the model fed G(x), except that
the reconstruction target is the clean x. Only the image log-likelihood reads
the target; every other term (capsules, capsule log-likelihood, dynamic l2,
sparsity, the probes' cross-entropies with the true labels) sees G(x).

Eq. 8 (AD, Algorithm 3): a student distilled from a frozen teacher,
    (1 - lambda) * L_SCAE(student, x')
      + lambda * (l2_loss(pres_stu(x') - pres_tch(x))
                  + l2_loss(post_stu(x') - post_tch(x)))
with pres = `caps_presence_prob` [B, K], post = `posterior_mixing_probs`
[B, P, K] and `l2_loss` = 0.5 * the sum over the whole batch, as
`tf.nn.l2_loss` (the SCAE loss is a batch mean, so the distillation term
weighs about B times more than a per-example mean would). The distillation
applies on every batch (x' = x on clean batches).
"""

import sonnet as snt
import tensorflow as tf

from defenses.methods import AD_TARGETS
from scae_tf import replicas
from scae_tf.training import step


def _attack_metrics(batch):
  return dict(adversarial=tf.cast(batch.adversarial, tf.float32),
              attack_success_rate=batch.success_rate,
              attack_mean_l2=batch.mean_l2)


def adversarial_training_objective(model, batch, ctx):
  """Eq. 7: the model fed `batch.images`, reconstructing `batch.clean`."""
  loss, metrics, _ = step.scae_terms(model, batch.images, batch.labels, ctx,
                                     target=batch.clean)
  return loss, {**metrics, **_attack_metrics(batch)}


class StudentTeacher(snt.Module):
  """AD's pair: the student trains, the teacher is frozen (its variables are
  not in the optimiser and its outputs are under stop-gradient)."""

  def __init__(self, student, teacher, name='student_teacher'):
    super().__init__(name=name)
    if student.config.architecture() != teacher.config.architecture():
      raise ValueError('The teacher must have the student\'s architecture '
                       f'(configs {teacher.config.name!r} and '
                       f'{student.config.name!r} differ).')
    self.student = student
    self.teacher = teacher
    self.config = student.config


def distillation_objective(weight=0.5, target='input'):
  """Eq. 8 with lambda = `weight`; see `AD_TARGETS` for `target`."""
  if target not in AD_TARGETS:
    raise ValueError(f'Unknown AD target {target!r}; expected one of '
                     f'{AD_TARGETS}.')
  if not 0. <= weight <= 1.:
    raise ValueError(f'The distillation weight must be in [0, 1], got '
                     f'{weight}.')

  def loss_fn(pair, batch, ctx):
    rec_target = batch.images if target == 'input' else batch.clean
    student_loss, metrics, stu = step.scae_terms(
        pair.student, batch.images, batch.labels, ctx, target=rec_target)
    # The teacher's capsules only: its image decoder and losses are unused.
    tch = pair.teacher.encode(batch.clean).obj
    distill = replicas.sum_share(
        tf.nn.l2_loss(stu.caps_presence_prob
                      - tf.stop_gradient(tch.caps_presence_prob))
        + tf.nn.l2_loss(stu.posterior_mixing_probs - tf.stop_gradient(
            tch.likelihood.posterior_mixing_probs)))
    loss = (1. - weight) * student_loss + weight * distill
    metrics = {**metrics, **_attack_metrics(batch),
               'student_loss': student_loss, 'distillation_loss': distill}
    return loss, metrics

  return loss_fn
