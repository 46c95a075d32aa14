"""Trains the tiny SCAE for a few steps under a tf.distribute strategy and
saves what the distribution tests compare. Run as a script (each strategy
needs its own process setup):

  python distributed_run.py mirrored OUT.npz     # 1 device, then 2 logical
                                                 # CPUs, same process
  TF_CONFIG=... python distributed_run.py multiworker OUT.npz

Every run starts from the same weights (a fixed seed, then copied in) and
sees the same global batches; presence noise is off, so an N-replica step
must equal the 1-replica step on the same global batch.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

STEPS = 3
BATCH = 8


def batches():
  rng = np.random.RandomState(1)
  for _ in range(STEPS):
    yield (rng.rand(BATCH, 20, 20, 1).astype(np.float32),
           rng.randint(0, 10, BATCH).astype(np.int64))


def initial_weights():
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  tf.random.set_seed(0)
  np.random.seed(0)
  return [v.numpy() for v in SCAE(configs.tiny_config()).variables]


def train(strategy, weights):
  """Per-step loss and gradient norm, the momentum slots after step 1
  (lr * g / sqrt(ms + eps): the first gradients, signed) and the final
  weights."""
  from scae_tf import configs, recipes, training  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top
  recipe = recipes.get_recipe('paper').replace(batch_size=BATCH,
                                               learning_rate=1e-3)
  with strategy.scope():
    model = SCAE(configs.tiny_config())
    for var, value in zip(model.variables, weights):
      var.assign(value)
    opt = TF1RMSProp.for_recipe(model.trainable_variables, recipe)
  step = training.make_train_step(model, opt, noise=False, seed=0,
                                  strategy=strategy)
  out = {'loss': [], 'grad_global_norm': []}
  for i, (images, labels) in enumerate(batches()):
    metrics = step(tf.constant(images), tf.constant(labels))
    for k in ('loss', 'grad_global_norm'):
      out[k].append(float(metrics[k]))
    if i == 0:
      out['first_gradients'] = np.concatenate(
          [m.numpy().ravel() for m in opt.mom])
  out['weights'] = np.concatenate([v.numpy().ravel()
                                   for v in model.variables])
  out['replicas'] = strategy.num_replicas_in_sync
  return out


def main(mode, path):
  if mode == 'mirrored':
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    weights = initial_weights()
    single = train(tf.distribute.get_strategy(), weights)
    mirrored = train(tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']),
                     weights)
    results = {**{f'single/{k}': v for k, v in single.items()},
               **{f'mirrored/{k}': v for k, v in mirrored.items()}}
  elif mode == 'multiworker':
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    results = {f'multiworker/{k}': v
               for k, v in train(strategy, initial_weights()).items()}
  elif mode == 'single':
    results = {f'single/{k}': v for k, v in
               train(tf.distribute.get_strategy(), initial_weights()).items()}
  else:
    raise SystemExit(f'unknown mode {mode!r}')
  np.savez(path, **results)


if __name__ == '__main__':
  main(*sys.argv[1:])
