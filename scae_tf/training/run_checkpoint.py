"""A run's checkpoints: saved only when finite, restored from the newest one
that reads back whole and finite.

The teacher's loop, the defences' phases (which restore a run before they
choose its phase) and the loaders share it, so that "where a run stands"
has one answer.
"""

import os

import numpy as np
import tensorflow as tf

from scae_tf import checkpoints
from scae_tf import cli
from scae_tf import run_folder
from scae_tf.run_folder import CHECKPOINT_DIR
from scae_tf.run_folder import CHECKPOINT_NAME


class NonFiniteLossError(cli.TrainingFailed):
  """Training produced a NaN/inf; nothing non-finite was saved."""


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


def _restore(ckpt, manager, variables, log):
  """Restores the newest checkpoint that reads back whole and finite; returns
  its path, or None when the folder has no checkpoint.

  Older checkpoints stand in for damaged ones (a truncated or corrupt file)
  and for non-finite ones (written by versions without the NaN guard), with
  a warning each.
  """
  # The manager's checkpoints, and the complete-looking ones beside, which
  # a save killed before it updated its `checkpoint` file leaves.
  listed = manager.checkpoints
  for path in run_folder.readable_checkpoints(manager.directory, listed, log):
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
  candidates = run_folder.checkpoints_newest_first(manager.directory, listed)
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
