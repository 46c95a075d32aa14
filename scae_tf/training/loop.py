"""The resumable training loop shared by the teacher and the defences.

Everything that decides the future of a run is in its checkpoint: the model,
the optimiser (whose step is also the data position: the batch stream is a
function of the seed and the step), the random state of the step (stateless
seeds are functions of the seed and the step; `tf.random.Generator`s and
counters a method adds go in `state`). A run killed at any point and
restarted with the same command therefore continues bit-identically.

A save writes the config beside the checkpoint first, then TF writes the
data files and the `checkpoint` index last, so an interrupted save leaves
the previous checkpoint in force; a resumed run restores the newest
checkpoint that reads back whole and finite (`RunCheckpoint`). A state with
a non-finite loss, gradient norm or checkpointed variable (model, optimiser
slots, `state`) is never saved (NonFiniteLossError, naming the last finite
checkpoint). Ctrl-C saves the current step, then raises TrainingInterrupted
(a KeyboardInterrupt); under `scae_tf.interrupts.handle_signals` (the
scripts), Ctrl-C and SIGTERM stop a step with an adversarial batch within
seconds, and save the step before it (`_run_step`).
"""

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf
from tqdm import tqdm

from scae_tf import interrupts
from scae_tf.training.run_checkpoint import NonFiniteLossError
from scae_tf.training.run_checkpoint import RunCheckpoint
from scae_tf.training.run_dir import JsonlLog
from scae_tf.training.run_dir import LOG_FILE
from scae_tf.training.run_dir import TB_DIR
from scae_tf.training.step import make_train_step


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


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """How `train_loop` trains, saves and reports, besides the model, the
  optimiser, the data, the folder and the end step it is handed.

  noise, seed, loss_fn (None: the SCAE objective), prepare, jit_compile,
    strategy: build the step (see `make_train_step`), unless a compiled
    `train_step(images, labels) -> metrics` is given.
  evaluators: run after every epoch, before its checkpoint (see
    `scae_tf.training.evaluators`).
  state: extra trackables to checkpoint (variables, `tf.random.Generator`s,
    modules), by name.
  save_every: save every N steps (and at every epoch end and the end).
  config: the model config saved beside each checkpoint (default: the
    checkpointed model's).
  checkpoint_model: what is saved as the run's model, when the model holds
    more (a student and its frozen teacher: only the student is saved, so
    `scae_tf.loading.load_model` reads the run as any other).
  description: the progress bar's label (e.g. a defence's phase).
  step_fields: a `StepFields` of the method: what it adds to the progress
    bar and which steps it logs besides every tenth.
  progress: show the progress bar.
  log: callable(str) for what is resumed and the warnings.
  """
  noise: bool = True
  seed: Optional[int] = 0
  loss_fn: Optional[Callable] = None
  prepare: Optional[Callable] = None
  train_step: Optional[Callable] = None
  jit_compile: bool = False
  strategy: Any = None
  evaluators: Sequence[Any] = ()
  state: Optional[Mapping[str, Any]] = None
  save_every: int = 1000
  config: Any = None
  checkpoint_model: Any = None
  description: Optional[str] = None
  step_fields: Optional['StepFields'] = None
  progress: bool = True
  log: Callable[[str], Any] = print


def train_loop(model, optimizer, stream, logdir, total_steps,
               options: Optional[LoopOptions] = None, **changes):
  """Trains until `optimizer.step == total_steps`, resuming from `logdir`.

  Args:
    model: what the loss function takes (an SCAE, or a student and teacher).
    optimizer: a `TF1RMSProp`; its `step` is the run's step.
    stream: a batch stream with `steps_per_epoch` and `batches(start_step)`
      yielding global batches (images, labels); a resumed run restarts it at
      the restored step and so sees the same data as an uninterrupted one.
    options: a `LoopOptions` (default: its defaults); `changes`, its fields
      as keywords, replace those of `options`.
  Returns the last step's metrics. Saves every `save_every` steps, at every
  epoch end and at the end (see the module doc for what a save and a stop
  guarantee).
  """
  opts = dataclasses.replace(options or LoopOptions(), **changes)
  if opts.save_every < 1 or total_steps < 1:
    raise ValueError(f'save_every ({opts.save_every}) and total_steps '
                     f'({total_steps}) must be positive.')
  saved_model = (opts.checkpoint_model if opts.checkpoint_model is not None
                 else model)
  run_ckpt = RunCheckpoint(logdir, saved_model, optimizer, opts.state,
                           opts.config, log=opts.log)
  _restore_run(run_ckpt, opts.log)
  step_fn = opts.train_step or make_train_step(
      model, optimizer, noise=opts.noise, seed=opts.seed,
      jit_compile=opts.jit_compile, strategy=opts.strategy,
      prepare=opts.prepare,
      **({'loss_fn': opts.loss_fn} if opts.loss_fn else {}))
  start = saved_at = int(optimizer.step.numpy())
  outputs = _Outputs(logdir, start, total_steps, stream.steps_per_epoch,
                     opts.step_fields or StepFields(), opts.progress,
                     opts.description)
  metrics = {}
  undo, traced = _step_state(optimizer, opts.state), []
  try:
    for images, labels in stream.batches(start):
      step = int(optimizer.step.numpy())
      if step >= total_steps:
        break
      out = _run_step(step_fn, images, labels, undo, traced)
      if out is None:  # stopped part-way, and undone
        raise interrupts.Interrupted()
      metrics = _finite_metrics(out, step + 1, run_ckpt)
      step += 1
      outputs.step(step, metrics)
      epoch_end = step % stream.steps_per_epoch == 0
      if epoch_end:
        outputs.evaluate(step, opts.evaluators)
      if step % opts.save_every == 0 or epoch_end or step == total_steps:
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
    outputs.close()
  return metrics


def _restore_run(run_ckpt, log):
  """Restores the run's newest usable checkpoint, if any, and says so."""
  last_good = run_ckpt.restore()
  step = int(run_ckpt.optimizer.step.numpy())
  if last_good is None:
    log(f'starting at step {step}')
    return
  log(f'resuming from step {step} ({last_good})')
  if last_good != run_ckpt.manager.latest_checkpoint:
    # Older than what the `checkpoint` file names: make it the one in force,
    # for the loaders and the manager's rotation (which then deletes the
    # damaged ones).
    run_ckpt.save()


def _finite_metrics(out, step, run_ckpt):
  """The step's metrics as floats; NonFiniteLossError (nothing saved) if its
  loss or gradient norm is not finite."""
  metrics = {k: float(v) for k, v in out.items()}
  checked = ('loss', 'grad_global_norm')
  bad = [k for k in checked if k in metrics and not math.isfinite(metrics[k])]
  if bad:
    values = ', '.join(f'{k} {v:g}' for k, v in metrics.items()
                       if k in checked)
    raise NonFiniteLossError(
        f'Non-finite {" and ".join(bad)} at step {step} ({values}); '
        f'stopped without saving. {run_ckpt.where_to_resume()}')
  return metrics


class StepFields:
  """What a method adds to the loop's per-step outputs. This one adds
  nothing; a defence's adds its adversarial batches
  (`defenses.adversarial_batches.AdversarialFields`)."""

  def postfix(self, metrics):
    """Extra fields of the progress bar after a step."""
    del metrics
    return {}

  def always_log(self, metrics):
    """Whether this step goes to the log although it is not a tenth."""
    del metrics
    return False


class _Outputs:
  """Where the loop reports: the progress bar, `log.jsonl` (every tenth
  step, the last, those the method asks for, and every evaluation) and
  TensorBoard. Its clock resumes from the log's last record."""

  def __init__(self, logdir, start, total_steps, steps_per_epoch, fields,
               progress, description):
    self.log_file = JsonlLog(os.path.join(logdir, LOG_FILE))
    self.writer = tf.summary.create_file_writer(os.path.join(logdir, TB_DIR))
    self.t0 = time.time() - self.log_file.truncate_after(start)
    self.total_steps, self.spe, self.fields = (total_steps, steps_per_epoch,
                                               fields)
    self.bar = tqdm(total=total_steps, initial=start, disable=not progress,
                    unit='step', dynamic_ncols=True, desc=description)

  def _write(self, record, group, values, step):
    self.log_file.write(dict(record, wall_time=time.time() - self.t0,
                             **values))
    with self.writer.as_default(step=step):
      for k, v in values.items():
        tf.summary.scalar(f'{group}/{k}', v)

  def step(self, step, metrics):
    self.bar.update(1)
    self.bar.set_postfix(loss=f'{metrics["loss"]:.1f}',
                         prior=f'{metrics.get("prior_cls_acc", 0):.2f}',
                         post=f'{metrics.get("posterior_cls_acc", 0):.2f}',
                         **self.fields.postfix(metrics))
    if (step % 10 == 0 or step == self.total_steps
        or self.fields.always_log(metrics)):
      self._write(dict(step=step, epoch=step / self.spe), 'train', metrics,
                  step)

  def evaluate(self, step, evaluators):
    for evaluator in evaluators:
      values = evaluator(step)
      self._write(dict(step=step, epoch=step // self.spe, eval=True,
                       **evaluator.tags), 'test', values, step)
      self.bar.write(f'epoch {step // self.spe}: ' + ', '.join(
          f'{k} {v:.4f}' for k, v in values.items()))

  def close(self):
    self.bar.close()
    self.writer.flush()
