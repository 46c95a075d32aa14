"""`tf.distribute` strategies by name, for the command line.

  default      one device (the port's reference numerics)
  mirrored     all local GPUs (or CPUs) of this machine, synchronous
  multiworker  several machines (or processes), synchronous; each process
               reads its role from the TF_CONFIG environment variable

Build the model and the optimiser inside `strategy.scope()`, then hand the
strategy to `make_train_step` / `train_loop`; the global batch is split over
the replicas (see `scae_tf.training.step`).
"""

import json
import os

import tensorflow as tf

from scae_tf.recipes import STRATEGIES


def make_strategy(name='default'):
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy()
  if name == 'multiworker':
    if 'TF_CONFIG' not in os.environ:
      raise ValueError('--strategy=multiworker reads the cluster from the '
                       'TF_CONFIG environment variable, which is not set.')
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f'Unknown strategy {name!r}; expected one of '
                   f'{STRATEGIES}.')


def worker_role():
  """(task index, is_chief) of this process in a TF_CONFIG cluster.

  Worker 0 is the chief (no separate chief task is used); without TF_CONFIG
  this process is the chief.
  """
  cfg = json.loads(os.environ.get('TF_CONFIG', '{}'))
  task = cfg.get('task', {})
  kind, index = task.get('type', 'worker'), int(task.get('index', 0))
  return index, kind == 'chief' or (kind == 'worker' and index == 0
                                    and 'chief' not in cfg.get('cluster', {}))
