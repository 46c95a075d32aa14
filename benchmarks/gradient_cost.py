"""What the true gradient costs: forward and forward + input gradient of a
k-means target with the SCAE's stop-gradients (gradient='code') and
without them ('full').

  python benchmarks/gradient_cost.py --checkpoint=pretrained/teacher_mnist_cpu

On one batch of MNIST test digits (seed 0), each compiled function is
timed --repeats times, the two gradients alternating so that both see the
same machine load. Prints JSON: per target, the median seconds of each and
the ratios full / code. The forward values agree bit for bit
(tests/test_true_gradient.py): the stops are identities forward, so the
forward ratio should be 1 within noise; the gradient does more work with
'full', because it flows through the part capsules as well.
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string('checkpoint', 'pretrained/teacher_mnist_cpu',
                    'A checkpoint with its k-means beside.')
flags.DEFINE_list('targets', ['PriK', 'PosK'], 'k-means targets.')
flags.DEFINE_integer('batch_size', 100, 'Digits per call.')
flags.DEFINE_integer('repeats', 7, 'Timed calls of each function.')
flags.DEFINE_string('data_dir', None, 'Folder of the IDX files.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import classifiers, margins  # pylint: disable=g-import-not-at-top
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  import samples  # pylint: disable=g-import-not-at-top

  x, y = samples.mnist_test_digits(FLAGS.batch_size, FLAGS.data_dir)
  loaded = loading.load_model(FLAGS.checkpoint)
  report = dict(checkpoint=FLAGS.checkpoint, batch_size=FLAGS.batch_size,
                repeats=FLAGS.repeats)
  for name in FLAGS.targets:
    km = loaded.kmeans[f'{classifiers.feature_kind_of(name)}_cosine']
    calls = {}
    for gradient in ('code', 'full'):
      target = margins.margin_target(classifiers.make_classifier(
          loaded.model, name, km, gradient=gradient))

      @tf.function
      def forward(x, y, target=target):
        return tf.reduce_sum(target(x, y)[0])

      @tf.function
      def with_gradient(x, y, target=target):
        with tf.GradientTape() as tape:
          tape.watch(x)
          total = tf.reduce_sum(target(x, y)[0])
        return tape.gradient(total, x)

      calls[f'forward_{gradient}'] = forward
      calls[f'gradient_{gradient}'] = with_gradient
    times = {key: [] for key in calls}
    for call in calls.values():  # trace and warm up
      call(x, y)
    for _ in range(FLAGS.repeats):
      for key, call in calls.items():
        start = time.perf_counter()
        np.asarray(call(x, y))
        times[key].append(time.perf_counter() - start)
    median = {key: float(np.median(t)) for key, t in times.items()}
    report[name] = dict(
        {f'{key}_s': round(t, 4) for key, t in median.items()},
        forward_full_over_code=round(
            median['forward_full'] / median['forward_code'], 3),
        gradient_full_over_code=round(
            median['gradient_full'] / median['gradient_code'], 3))
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  app.run(main)
