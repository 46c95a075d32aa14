"""What the input pipeline costs a training epoch.

  python benchmarks/data_pipeline.py --dataset=mnist --preprocess=resize,pad_shift --steps=100

For each preprocessing mode, prints JSON with
  * pipeline_s_per_epoch: producing one epoch of batches through the
    training pipeline (`BatchStream.as_tf_dataset`), nothing else running;
  * train_s_per_step_pipeline / train_s_per_step_constant: median seconds of
    a training step fed by the pipeline, and fed one constant batch already
    in memory, over --steps steps each (after a warm-up);
  * loading_share: (pipeline - constant) / pipeline, the share of a training
    step's time that data loading costs (negative values are noise).
The MNIST config and a fresh init; the first call per mode also builds the
preprocessing cache (not timed).
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string('dataset', 'mnist', 'mnist or fashion_mnist.')
flags.DEFINE_list('preprocess', ['resize', 'pad_shift'], 'Modes to time.')
flags.DEFINE_integer('steps', 100, 'Timed training steps per variant.')
flags.DEFINE_string('data_dir', None, 'Data directory (default: resolved).')
FLAGS = flags.FLAGS


def _median_step(step_fn, batches, steps):
  import numpy as np  # pylint: disable=g-import-not-at-top
  times = []
  for images, labels in batches:
    start = time.perf_counter()
    float(step_fn(images, labels)['loss'])
    times.append(time.perf_counter() - start)
    if len(times) == steps:
      break
  return float(np.median(times))


def main(argv):
  from scae_tf import cli  # pylint: disable=g-import-not-at-top
  if cli.extra_args_error(argv):
    return 2
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import configs, data, recipes, training  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top

  config = configs.get_config('mnist')
  recipe = recipes.get_recipe(config.default_recipe)
  result = dict(dataset=FLAGS.dataset, steps=FLAGS.steps, modes={})
  for mode in FLAGS.preprocess:
    stream = data.BatchStream(FLAGS.dataset, 'train', recipe.batch_size, mode,
                              data_dir=FLAGS.data_dir)
    start = time.perf_counter()
    for _ in stream.as_tf_dataset(0, stream.steps_per_epoch):
      pass
    pipeline_epoch = time.perf_counter() - start

    tf.random.set_seed(0)
    model = SCAE(config)
    optimizer = TF1RMSProp.for_recipe(model.trainable_variables, recipe)
    step = training.make_train_step(model, optimizer, noise=True, seed=0)
    images, labels = stream.batch(0)
    images, labels = tf.constant(images), tf.constant(labels)
    float(step(images, labels)['loss'])  # Traces and compiles.
    fed = _median_step(step, stream.as_tf_dataset(1), FLAGS.steps)
    constant = _median_step(step, ((images, labels) for _ in iter(int, 1)),
                            FLAGS.steps)
    result['modes'][mode] = dict(
        pipeline_s_per_epoch=round(pipeline_epoch, 3),
        steps_per_epoch=stream.steps_per_epoch,
        train_s_per_step_pipeline=round(fed, 4),
        train_s_per_step_constant=round(constant, 4),
        loading_share=round((fed - constant) / fed, 4))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
