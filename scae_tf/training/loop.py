"""The resumable training loop shared by the teacher and the defences.

Everything that decides the future of a run is in its checkpoint: the model,
the optimiser (whose step is also the data position: the batch stream is a
function of the seed and the step), the random state of the step (stateless
seeds are functions of the seed and the step; `tf.random.Generator`s and
counters a method adds go in `state`). A run killed at any point and
restarted with the same command therefore continues bit-identically.
"""

import math
import os
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from scae_tf import checkpoints
from scae_tf.training.run_dir import JsonlLog
from scae_tf.training.run_dir import LOG_FILE
from scae_tf.training.step import make_train_step


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/inf; nothing non-finite was saved."""


def _all_finite(variables):
  return all(np.all(np.isfinite(v.numpy())) for v in variables
             if v.dtype.is_floating)


class RunCheckpoint:
  """The checkpoints of a run folder (`<logdir>/ckpt/ckpt-<step>`, the
  last three kept), each with its model config beside it."""

  def __init__(self, logdir, model, optimizer, state=None, config=None):
    self.optimizer = optimizer
    self.config = config if config is not None else model.config
    self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                          **(state or {}))
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(logdir, 'ckpt'), max_to_keep=3)

  @property
  def latest(self):
    return self.manager.latest_checkpoint

  def restore_latest(self):
    """Restores the latest checkpoint, if any; returns its path."""
    if self.latest:
      self.checkpoint.read(self.latest).assert_existing_objects_matched()
    return self.latest

  def save(self):
    """Saves at the optimiser's step, refusing a non-finite state."""
    step = int(self.optimizer.step.numpy())
    if not _all_finite(self.optimizer.variables_):
      raise NonFiniteLossError(
          f'Non-finite weights at step {step}; not saved. The last good '
          f'checkpoint is {self.latest}.')
    path = self.manager.save(checkpoint_number=step)
    checkpoints.save_config(self.config, path)
    # The manager deletes old checkpoints; delete their configs with them.
    kept = set(self.manager.checkpoints)
    for name in os.listdir(self.manager.directory):
      if name.endswith(checkpoints.CONFIG_SUFFIX):
        prefix = os.path.join(self.manager.directory,
                              name[:-len(checkpoints.CONFIG_SUFFIX)])
        if prefix not in kept:
          os.remove(prefix + checkpoints.CONFIG_SUFFIX)
    return path


def train_loop(model, optimizer, stream, logdir, total_steps, *, noise=True,
               seed=0, loss_fn=None, prepare=None, train_step=None,
               evaluators=(),
               state=None, save_every=1000, jit_compile=False, strategy=None,
               progress=True, config=None, checkpoint_model=None,
               description=None):
  """Trains until `optimizer.step == total_steps`, resuming from `logdir`.

  Args:
    model: what the loss function takes (an SCAE, or a student and teacher);
      it is checkpointed whole.
    optimizer: a `TF1RMSProp`; its `step` is the run's step.
    stream: a batch stream with `steps_per_epoch` and `batches(start_step)`
      yielding global batches (images, labels); a resumed run restarts it at
      the restored step and so sees the same data as an uninterrupted one.
    loss_fn / prepare / noise / seed / jit_compile / strategy: build the
      step (see
      `make_train_step`), unless a compiled `train_step(images, labels) ->
      metrics` is given.
    evaluators: run after every epoch, before its checkpoint (see
      `scae_tf.training.evaluators`).
    state: extra trackables to checkpoint (variables, `tf.random.Generator`s,
      modules), by name.
    config: the model config saved beside each checkpoint (default: the
      checkpointed model's).
    checkpoint_model: what is saved as the run's model, when `model` holds
      more (a student and its frozen teacher: only the student is saved, so
      `scae_tf.loading.load_model` reads the run as any other).
    description: the progress bar's label (e.g. a defence's phase).
  Returns the last step's metrics.

  Checkpoints are saved every `save_every` steps, at every epoch end and at
  the end. TF writes the data files first and updates the `checkpoint` index
  last, so an interrupted save leaves the previous checkpoint in force. A
  state with a non-finite loss, gradient or weight is never saved
  (NonFiniteLossError). Ctrl-C saves the current step, then re-raises.
  """
  if save_every < 1 or total_steps < 1:
    raise ValueError(f'save_every ({save_every}) and total_steps '
                     f'({total_steps}) must be positive.')
  saved = checkpoint_model if checkpoint_model is not None else model
  run_ckpt = RunCheckpoint(logdir, saved, optimizer, state, config)
  run_ckpt.restore_latest()
  step_fn = train_step or make_train_step(
      model, optimizer, noise=noise, seed=seed, jit_compile=jit_compile,
      strategy=strategy, prepare=prepare,
      **({'loss_fn': loss_fn} if loss_fn else {}))
  log = JsonlLog(os.path.join(logdir, LOG_FILE))
  writer = tf.summary.create_file_writer(os.path.join(logdir, 'tb'))
  save = run_ckpt.save

  start = int(optimizer.step.numpy())
  elapsed = log.truncate_after(start)
  spe = stream.steps_per_epoch
  metrics = {}
  bar = tqdm(total=total_steps, initial=start, disable=not progress,
             unit='step', dynamic_ncols=True, desc=description)
  t0 = time.time() - elapsed
  saved_at = start
  try:
    for images, labels in stream.batches(start):
      step = int(optimizer.step.numpy())
      if step >= total_steps:
        break
      out = step_fn(tf.constant(images), tf.constant(labels))
      metrics = {k: float(v) for k, v in out.items()}
      bad = [k for k in ('loss', 'grad_global_norm')
             if k in metrics and not math.isfinite(metrics[k])]
      if bad:
        raise NonFiniteLossError(
            f'Non-finite {" and ".join(bad)} ({metrics["loss"]}) at step '
            f'{step + 1}; stopped without saving. The last good checkpoint '
            f'is {run_ckpt.latest}.')
      step += 1
      bar.update(1)
      bar.set_postfix(loss=f'{metrics["loss"]:.1f}',
                      prior=f'{metrics.get("prior_cls_acc", 0):.2f}',
                      post=f'{metrics.get("posterior_cls_acc", 0):.2f}')
      # Every adversarial batch of a defence is logged with its attack's
      # success rate and L2.
      if step % 10 == 0 or step == total_steps or metrics.get('adversarial'):
        log.write(dict(step=step, epoch=step / spe,
                       wall_time=time.time() - t0, **metrics))
        with writer.as_default(step=step):
          for k, v in metrics.items():
            tf.summary.scalar(f'train/{k}', v)
      epoch_end = step % spe == 0
      if epoch_end:
        for evaluator in evaluators:
          values = evaluator(step)
          log.write(dict(step=step, epoch=step // spe, eval=True,
                         wall_time=time.time() - t0, **evaluator.tags,
                         **values))
          with writer.as_default(step=step):
            for k, v in values.items():
              tf.summary.scalar(f'test/{k}', v)
          bar.write(f'epoch {step // spe}: ' + ', '.join(
              f'{k} {v:.4f}' for k, v in values.items()))
      if step % save_every == 0 or epoch_end or step == total_steps:
        save()
        saved_at = step
  except KeyboardInterrupt:
    step = int(optimizer.step.numpy())
    if step != saved_at:
      save()
    raise
  finally:
    bar.close()
    writer.flush()
  return metrics
