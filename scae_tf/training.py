"""The compiled training step shared by the teacher and the defences."""

import tensorflow as tf

#: Scalars a train step reports (upstream's names).
METRICS = ('loss', 'rec_ll', 'log_prob', 'dynamic_weights_l2',
           'prior_cls_xe', 'posterior_cls_xe', 'prior_within_sparsity_loss',
           'prior_between_sparsity_loss', 'posterior_within_sparsity_loss',
           'posterior_between_sparsity_loss', 'prior_cls_acc',
           'posterior_cls_acc')


def compute_gradients(model, images, labels, training, target=None):
  """Loss, gradients w.r.t. the model's trainable variables, and the output.

  Only the parts of the graph that the loss needs are computed (full=False).
  """
  with tf.GradientTape() as tape:
    out = model.forward(images, labels, target=target, training=training,
                        full=False)
    loss = model.loss(out)
  variables = model.trainable_variables
  return loss, tape.gradient(loss, variables), out


def make_train_step(model, optimizer, noise=True, jit_compile=False):
  """Returns a `tf.function` doing one optimiser step on (images, labels).

  `optimizer` is a `TF1RMSProp` built for `model.trainable_variables`.
  `noise` switches the config's presence noise (the fork trains with it; the
  defences and the reference trajectory train without). The returned metrics
  are computed with the weights *before* the update, as TF1 reported them.
  """
  variables = model.trainable_variables
  if [v.ref() for v in variables] != [v.ref() for v in optimizer.variables_]:
    raise ValueError('The optimiser was built for other variables than '
                     'model.trainable_variables.')

  @tf.function(jit_compile=jit_compile)
  def train_step(images, labels):
    loss, grads, out = compute_gradients(model, images, labels, noise)
    lr = optimizer.apply(grads)
    metrics = {k: getattr(out, k) for k in METRICS[1:]
               if getattr(out, k) is not None}
    metrics['loss'] = loss
    metrics['lr'] = lr
    metrics['grad_global_norm'] = tf.linalg.global_norm(
        [g for g in grads if g is not None])
    return metrics

  return train_step
