"""The compiled training step and the resumable training loop, shared by the
teacher and the defences."""

import dataclasses
import json
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from scae_tf import checkpoints

#: Scalars a train step reports (upstream's names).
METRICS = ('loss', 'rec_ll', 'log_prob', 'dynamic_weights_l2',
           'prior_cls_xe', 'posterior_cls_xe', 'prior_within_sparsity_loss',
           'prior_between_sparsity_loss', 'posterior_within_sparsity_loss',
           'posterior_between_sparsity_loss', 'prior_cls_acc',
           'posterior_cls_acc')


def compute_gradients(model, images, labels, training, target=None,
                      noise_seed=None):
  """Loss, gradients w.r.t. the model's trainable variables, and the output.

  Only the parts of the graph that the loss needs are computed (full=False).
  """
  with tf.GradientTape() as tape:
    out = model.forward(images, labels, target=target, training=training,
                        full=False, noise_seed=noise_seed)
    loss = model.loss(out)
  variables = model.trainable_variables
  return loss, tape.gradient(loss, variables), out


def make_train_step(model, optimizer, noise=True, jit_compile=False,
                    seed=None):
  """Returns a `tf.function` doing one optimiser step on (images, labels).

  `optimizer` is a `TF1RMSProp` built for `model.trainable_variables`.
  `noise` switches the config's presence noise (the fork trains with it; the
  defences and the reference trajectory train without). The returned metrics
  are computed with the weights *before* the update, as TF1 reported them.
  With `seed`, the noise of step s is drawn statelessly from (seed, s): a run
  resumed from a checkpoint then continues exactly as if uninterrupted.
  """
  variables = model.trainable_variables
  if [v.ref() for v in variables] != [v.ref() for v in optimizer.variables_]:
    raise ValueError('The optimiser was built for other variables than '
                     'model.trainable_variables.')

  @tf.function(jit_compile=jit_compile)
  def train_step(images, labels):
    noise_seed = None
    if seed is not None:
      noise_seed = tf.stack([tf.constant(seed, tf.int64), optimizer.step])
    loss, grads, out = compute_gradients(model, images, labels, noise,
                                         noise_seed=noise_seed)
    lr = optimizer.apply(grads)
    metrics = {k: getattr(out, k) for k in METRICS[1:]
               if getattr(out, k) is not None}
    metrics['loss'] = loss
    metrics['lr'] = lr
    metrics['grad_global_norm'] = tf.linalg.global_norm(
        [g for g in grads if g is not None])
    return metrics

  return train_step


# --- The training loop ------------------------------------------------------

RUN_FILE = 'run.json'
LOG_FILE = 'log.jsonl'


class RunMismatchError(ValueError):
  """The log directory holds a run with other settings."""


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def prepare_logdir(logdir, run_settings, overwrite=False):
  """Creates `logdir`, or checks that the run there has the same settings.

  Refuses (RunMismatchError) a directory that holds another run unless
  `overwrite`, which deletes it first. Returns True if a run is resumed.
  """
  path = os.path.join(logdir, RUN_FILE)
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous == run_settings:
      return True
    if not overwrite:
      diff = {k: (previous.get(k), run_settings.get(k))
              for k in sorted(set(previous) | set(run_settings))
              if previous.get(k) != run_settings.get(k)}
      raise RunMismatchError(
          f'{logdir} holds a run with other settings (previous, now): '
          f'{diff}. Use another --logdir, or --overwrite to delete it.')
    shutil.rmtree(logdir)
  elif os.path.isdir(logdir) and os.listdir(logdir) and not overwrite:
    raise RunMismatchError(
        f'{logdir} is not empty and holds no {RUN_FILE}; refusing to write '
        'into it (use --overwrite to delete it).')
  elif os.path.isdir(logdir):
    shutil.rmtree(logdir)
  os.makedirs(logdir, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(run_settings, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return False


def run_settings(config, **settings):
  """The JSON-able identity of a run: its config plus the loop settings."""
  return json.loads(json.dumps(dict(config=dataclasses.asdict(config),
                                    **settings)))


class JsonlLog:
  """Appends one JSON object per line; readable while training runs."""

  def __init__(self, path):
    self.path = path

  def write(self, record):
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def truncate_after(self, step):
    """Drops records past `step`: a resumed run redoes those steps.

    Returns the largest `wall_time` among the kept records (0 if none), so a
    resumed run's clock continues where the interrupted one stopped instead
    of restarting at zero and folding two runs onto one time axis.
    """
    if not os.path.exists(self.path):
      return 0.0
    with open(self.path) as f:
      keep = [line for line in f if json.loads(line)['step'] <= step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, self.path)
    return max((json.loads(line).get('wall_time', 0.0) for line in keep),
               default=0.0)


def probe_accuracy(model, batches):
  """Linear-probe test accuracy (prior, posterior) over (images, labels)."""
  step = tf.function(lambda x: model.forward(x, full=False))
  correct = np.zeros(2)
  total = 0
  for images, labels in batches:
    out = step(tf.constant(images))
    correct += [np.sum(out.prior_cls_pred.numpy() == labels),
                np.sum(out.posterior_cls_pred.numpy() == labels)]
    total += len(labels)
  return dict(prior_probe_acc=correct[0] / total,
              posterior_probe_acc=correct[1] / total)


def train_loop(model, optimizer, stream, logdir, total_steps, noise=True,
               save_every=1000, eval_batches=None, jit_compile=False,
               progress=True, train_step=None, on_epoch_end=None, seed=0):
  """Trains until `optimizer.step == total_steps`, resuming from `logdir`.

  Args:
    stream: a batch stream with `steps_per_epoch` and `batches(start_step)`
      yielding (images, labels); resuming restarts it at the restored step,
      so a resumed run sees the same data as an uninterrupted one.
    eval_batches: callable returning (images, labels) batches of the test
      split, for the per-epoch probe accuracy; or None.
    train_step: a custom compiled step(images, labels) -> metrics dict
      (defences); defaults to `make_train_step(model, optimizer, noise)`.
    on_epoch_end: optional callable(step, wall_time) run after each epoch's
      probe and before its checkpoint (e.g. the k-means curve).
  Returns the last metrics dict.

  Checkpoints (model + optimiser, whose step is the data position) are saved
  every `save_every` steps and at every epoch end; TF writes the data files
  first and updates the `checkpoint` index last, so an interrupted save leaves
  the previous checkpoint in force.
  """
  ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = tf.train.CheckpointManager(ckpt, os.path.join(logdir, 'ckpt'),
                                       max_to_keep=3)
  if manager.latest_checkpoint:
    ckpt.read(manager.latest_checkpoint).assert_existing_objects_matched()
  step_fn = train_step or make_train_step(model, optimizer, noise=noise,
                                          jit_compile=jit_compile, seed=seed)
  log = JsonlLog(os.path.join(logdir, LOG_FILE))
  writer = tf.summary.create_file_writer(os.path.join(logdir, 'tb'))

  def save():
    path = manager.save(checkpoint_number=int(optimizer.step.numpy()))
    checkpoints.save_config(model.config, path)
    # The manager deletes old checkpoints; delete their configs with them.
    kept = set(manager.checkpoints)
    for name in os.listdir(manager.directory):
      if name.endswith(checkpoints.CONFIG_SUFFIX):
        prefix = os.path.join(manager.directory,
                              name[:-len(checkpoints.CONFIG_SUFFIX)])
        if prefix not in kept:
          os.remove(prefix + checkpoints.CONFIG_SUFFIX)
    return path

  start = int(optimizer.step.numpy())
  elapsed = log.truncate_after(start)
  spe = stream.steps_per_epoch
  metrics = {}
  bar = tqdm(total=total_steps, initial=start, disable=not progress,
             unit='step', dynamic_ncols=True)
  t0 = time.time() - elapsed
  try:
    for images, labels in stream.batches(start):
      step = int(optimizer.step.numpy())
      if step >= total_steps:
        break
      out = step_fn(tf.constant(images), tf.constant(labels))
      metrics = {k: float(v) for k, v in out.items()}
      if not math.isfinite(metrics['loss']):
        raise NonFiniteLossError(
            f'Non-finite loss {metrics["loss"]} at step {step + 1}; stopped '
            f'without saving. The last good checkpoint is '
            f'{manager.latest_checkpoint}.')
      step += 1
      bar.update(1)
      bar.set_postfix(loss=f'{metrics["loss"]:.1f}',
                      prior=f'{metrics.get("prior_cls_acc", 0):.2f}',
                      post=f'{metrics.get("posterior_cls_acc", 0):.2f}')
      record = dict(step=step, epoch=step / spe,
                    wall_time=time.time() - t0, **metrics)
      if step % 10 == 0 or step == total_steps:
        log.write(record)
        with writer.as_default(step=step):
          for k, v in metrics.items():
            tf.summary.scalar(f'train/{k}', v)
      epoch_end = step % spe == 0
      if epoch_end and eval_batches is not None:
        acc = probe_accuracy(model, eval_batches())
        log.write(dict(step=step, epoch=step // spe, eval=True,
                       wall_time=time.time() - t0, **acc))
        with writer.as_default(step=step):
          for k, v in acc.items():
            tf.summary.scalar(f'test/{k}', v)
        bar.write(f'epoch {step // spe}: ' + ', '.join(
            f'{k} {v:.4f}' for k, v in acc.items()))
      if epoch_end and on_epoch_end is not None:
        on_epoch_end(step, time.time() - t0)
      if step % save_every == 0 or epoch_end or step == total_steps:
        save()
  finally:
    bar.close()
    writer.flush()
  return metrics
