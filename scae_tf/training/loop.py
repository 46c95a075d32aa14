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
from scae_tf import cli
from scae_tf import interrupts
from scae_tf.training.run_dir import CHECKPOINT_DIR
from scae_tf.training.run_dir import CHECKPOINT_NAME
from scae_tf.training.run_dir import checkpoint_files
from scae_tf.training.run_dir import JsonlLog
from scae_tf.training.run_dir import LOG_FILE
from scae_tf.training.run_dir import TB_DIR
from scae_tf.training.step import make_train_step


class NonFiniteLossError(cli.TrainingFailed):
  """Training produced a NaN/inf; nothing non-finite was saved."""


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C (or SIGTERM, under `scae_tf.interrupts.handle_signals`) stopped
  the run once its step was saved; the message says where."""


def _step_state(optimizer, state):
  """What a training step may change before its update: the optimiser's
  step counter and the variables of `state` (counters, generator states)."""
  found = {optimizer.step.ref(): optimizer.step}
  for obj in (state or {}).values():
    for node in tf.train.TrackableView(obj).descendants():
      if isinstance(node, tf.Variable):
        found.setdefault(node.ref(), node)
  return list(found.values())


def _run_step(step_fn, images, labels, undo, traced):
  """One training step; None when a signal stopped it part-way.

  Under `scae_tf.interrupts.handle_signals`, a signal during the step is
  only recorded (`interrupts.deferred`): the step either finishes (and the
  loop stops after it), or a defence's adversarial batch stops early and
  the step fails before its update (`interrupts.guard`); then what it
  changed before (`undo`: the step counter, the attack's generator and
  counter) is rolled back, so the run resumes as if it never started. The
  first call is traced first, outside: tracing may take a minute and
  stops at once. `traced`: a list, [] until then.
  """
  images, labels = tf.constant(images), tf.constant(labels)
  if not interrupts.installed():
    return step_fn(images, labels)
  if not traced:
    if hasattr(step_fn, 'get_concrete_function'):
      step_fn.get_concrete_function(images, labels)
    traced.append(True)
  before = [v.numpy() for v in undo]
  with interrupts.deferred():
    try:
      return step_fn(images, labels)
    except tf.errors.InvalidArgumentError as e:
      if interrupts.requested() is None or interrupts.STOPPED not in str(e):
        raise
  for variable, value in zip(undo, before):
    variable.assign(value)
  return None


def _float_variables(objects):
  """The floating-point variables of the checkpointed objects, once each."""
  found = {}
  for obj in objects:
    variables = ([obj] if isinstance(obj, tf.Variable)
                 else getattr(obj, 'variables', ()))
    for v in variables:
      if v.dtype.is_floating:
        found.setdefault(v.ref(), v)
  return list(found.values())


def _count_non_finite(variables):
  return sum(not np.all(np.isfinite(v.numpy())) for v in variables)


def _checkpoints_newest_first(manager):
  """The checkpoints of the manager's folder, newest first: those its
  `checkpoint` file lists and the complete-looking ones beside, which a save
  killed before it updated that file leaves (or a garbled file hides)."""
  by_step = checkpoint_files(manager.directory)
  # The manager's spelling of a path wins: it compares paths as strings.
  for prefix in manager.checkpoints:
    number = prefix.rsplit('-', 1)[-1]
    if number.isdigit():
      by_step[int(number)] = prefix
  return [by_step[n] for n in sorted(by_step, reverse=True)]


def _restore(ckpt, manager, variables, log):
  """Restores the newest checkpoint that reads back whole and finite; returns
  its path, or None when the folder has no checkpoint.

  Older checkpoints stand in for damaged ones (a truncated or corrupt file)
  and for non-finite ones (written by versions without the NaN guard), with
  a warning each.
  """
  candidates = _checkpoints_newest_first(manager)
  for path in candidates:
    try:
      checkpoints.check_readable(path)
    except checkpoints.CorruptCheckpointError as e:
      log(f'warning: skipping checkpoint {path}: {e}')
      continue
    try:
      status = ckpt.read(path)
      status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
      raise checkpoints.CheckpointMismatchError(
          f'Checkpoint {path!r} does not fit this run: {e}') from None
    # The save counter exists only from the first save on: a run stopped
    # before it would leave it unread, and TF would warn at exit.
    status.expect_partial()
    bad = _count_non_finite(variables)
    if not bad:
      return path
    log(f'warning: skipping checkpoint {path}: {bad} of {len(variables)} '
        'variables hold non-finite values.')
  if candidates:
    raise checkpoints.CorruptCheckpointError(
        f'No usable checkpoint in {manager.directory} (tried '
        f'{", ".join(os.path.basename(p) for p in candidates)}); '
        '--overwrite restarts the run.')
  return None


class RunCheckpoint:
  """The checkpoints of a run folder (`<logdir>/ckpt/ckpt-<step>`, the last
  three kept), each with its model config beside it.

  `model` is what is saved as the run's model; `state` holds the extra
  trackables. Saving refuses a non-finite state; restoring takes the newest
  checkpoint that reads back whole and finite (`_restore`).
  """

  def __init__(self, logdir, model, optimizer, state=None, config=None,
               log=print):
    self.optimizer = optimizer
    self.config = config if config is not None else model.config
    self.log = log
    self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                          **(state or {}))
    self.variables = _float_variables([model, optimizer,
                                       *(state or {}).values()])
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(logdir, CHECKPOINT_DIR), max_to_keep=3,
        checkpoint_name=CHECKPOINT_NAME)
    self.last_good = None

  def restore(self):
    """Restores the newest usable checkpoint; returns its path or None."""
    self.last_good = _restore(self.checkpoint, self.manager, self.variables,
                              self.log)
    return self.last_good

  def where_to_resume(self):
    if self.last_good is None:
      return 'No checkpoint was saved: there is none to resume from.'
    return f'The last finite checkpoint is {self.last_good}.'

  def save(self):
    """Saves at the optimiser's step, refusing a non-finite state."""
    step = int(self.optimizer.step.numpy())
    bad = _count_non_finite(self.variables)
    if bad:
      raise NonFiniteLossError(
          f'{bad} of {len(self.variables)} checkpointed variables are '
          f'non-finite at step {step}; not saved. {self.where_to_resume()}')
    manager = self.manager
    # The config before the checkpoint: one in force always has its config.
    checkpoints.save_config(
        self.config,
        os.path.join(manager.directory, f'{CHECKPOINT_NAME}-{step}'))
    path = manager.save(checkpoint_number=step)
    # The manager deletes old checkpoints; delete their configs with them.
    kept = set(manager.checkpoints)
    for name in os.listdir(manager.directory):
      if name.endswith(checkpoints.CONFIG_SUFFIX):
        prefix = os.path.join(manager.directory,
                              name[:-len(checkpoints.CONFIG_SUFFIX)])
        if prefix not in kept:
          os.remove(prefix + checkpoints.CONFIG_SUFFIX)
    self.last_good = path
    return path


def train_loop(model, optimizer, stream, logdir, total_steps, *, noise=True,
               seed=0, loss_fn=None, prepare=None, train_step=None,
               evaluators=(), state=None, save_every=1000, jit_compile=False,
               strategy=None, progress=True, config=None,
               checkpoint_model=None, description=None, log=print):
  """Trains until `optimizer.step == total_steps`, resuming from `logdir`.

  Args:
    model: what the loss function takes (an SCAE, or a student and teacher).
    optimizer: a `TF1RMSProp`; its `step` is the run's step.
    stream: a batch stream with `steps_per_epoch` and `batches(start_step)`
      yielding global batches (images, labels); a resumed run restarts it at
      the restored step and so sees the same data as an uninterrupted one.
    loss_fn / prepare / noise / seed / jit_compile / strategy: build the
      step (see `make_train_step`), unless a compiled
      `train_step(images, labels) -> metrics` is given.
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
    log: callable(str) for what is resumed and the warnings.
  Returns the last step's metrics.

  Checkpoints are saved every `save_every` steps, at every epoch end and at
  the end; the config beside it first, then TF writes the data files, and
  the `checkpoint` index last, so an interrupted save leaves the previous
  checkpoint in force. A resumed run restores the newest checkpoint that
  reads back whole and finite (see `_restore`). A state with a non-finite
  loss, gradient norm or checkpointed variable (model, optimiser slots,
  `state`) is never saved (NonFiniteLossError, naming the last finite
  checkpoint). Ctrl-C saves the current step, then raises
  TrainingInterrupted (a KeyboardInterrupt); under
  `scae_tf.interrupts.handle_signals` (the scripts), Ctrl-C and SIGTERM
  stop a step with an adversarial batch within seconds, and save the step
  before it (`_run_step`).
  """
  if save_every < 1 or total_steps < 1:
    raise ValueError(f'save_every ({save_every}) and total_steps '
                     f'({total_steps}) must be positive.')
  saved_model = checkpoint_model if checkpoint_model is not None else model
  run_ckpt = RunCheckpoint(logdir, saved_model, optimizer, state, config,
                           log=log)
  last_good = run_ckpt.restore()
  step_fn = train_step or make_train_step(
      model, optimizer, noise=noise, seed=seed, jit_compile=jit_compile,
      strategy=strategy, prepare=prepare,
      **({'loss_fn': loss_fn} if loss_fn else {}))
  log_file = JsonlLog(os.path.join(logdir, LOG_FILE))
  writer = tf.summary.create_file_writer(os.path.join(logdir, TB_DIR))

  start = int(optimizer.step.numpy())
  saved_at = start
  if last_good is None:
    log(f'starting at step {start}')
  else:
    log(f'resuming from step {start} ({last_good})')
    if last_good != run_ckpt.manager.latest_checkpoint:
      # Older than what the `checkpoint` file names: make it the one in force,
      # for the loaders and the manager's rotation (which then deletes the
      # damaged ones).
      run_ckpt.save()
  elapsed = log_file.truncate_after(start)
  spe = stream.steps_per_epoch
  metrics = {}
  bar = tqdm(total=total_steps, initial=start, disable=not progress,
             unit='step', dynamic_ncols=True, desc=description)
  t0 = time.time() - elapsed
  adversarial = 0.
  undo, traced = _step_state(optimizer, state), []
  try:
    for images, labels in stream.batches(start):
      step = int(optimizer.step.numpy())
      if step >= total_steps:
        break
      out = _run_step(step_fn, images, labels, undo, traced)
      if out is None:  # stopped part-way, and undone
        raise interrupts.Interrupted()
      metrics = {k: float(v) for k, v in out.items()}
      bad = [k for k in ('loss', 'grad_global_norm')
             if k in metrics and not math.isfinite(metrics[k])]
      if bad:
        values = ', '.join(f'{k} {v:g}' for k, v in metrics.items()
                           if k in ('loss', 'grad_global_norm'))
        raise NonFiniteLossError(
            f'Non-finite {" and ".join(bad)} at step {step + 1} ({values}); '
            f'stopped without saving. {run_ckpt.where_to_resume()}')
      step += 1
      bar.update(1)
      postfix = dict(loss=f'{metrics["loss"]:.1f}',
                     prior=f'{metrics.get("prior_cls_acc", 0):.2f}',
                     post=f'{metrics.get("posterior_cls_acc", 0):.2f}')
      if 'adversarial' in metrics:
        # A defence: the share of adversarial batches so far, and how the
        # last attack did.
        adversarial += metrics['adversarial']
        postfix['adv'] = f'{adversarial / (step - start):.2f}'
        if metrics['adversarial']:
          postfix['hit'] = f'{metrics["attack_success_rate"]:.2f}'
      bar.set_postfix(**postfix)
      # Every adversarial batch of a defence is logged with its attack's
      # success rate and L2.
      if (step % 10 == 0 or step == total_steps
          or metrics.get('adversarial')):
        log_file.write(dict(step=step, epoch=step / spe,
                            wall_time=time.time() - t0, **metrics))
        with writer.as_default(step=step):
          for k, v in metrics.items():
            tf.summary.scalar(f'train/{k}', v)
      epoch_end = step % spe == 0
      if epoch_end:
        for evaluator in evaluators:
          values = evaluator(step)
          log_file.write(dict(step=step, epoch=step // spe, eval=True,
                              wall_time=time.time() - t0, **evaluator.tags,
                              **values))
          with writer.as_default(step=step):
            for k, v in values.items():
              tf.summary.scalar(f'test/{k}', v)
          bar.write(f'epoch {step // spe}: ' + ', '.join(
              f'{k} {v:.4f}' for k, v in values.items()))
      if step % save_every == 0 or epoch_end or step == total_steps:
        run_ckpt.save()
        saved_at = step
      interrupts.check()  # a signal during the step: stop after it
  except KeyboardInterrupt:
    step = int(optimizer.step.numpy())
    if step != saved_at:
      run_ckpt.save()
    saved = (f'saved in {run_ckpt.last_good}'
             if run_ckpt.last_good is not None else 'no step to save')
    raise TrainingInterrupted(f'at step {step}, {saved}.') from None
  finally:
    bar.close()
    writer.flush()
  return metrics
