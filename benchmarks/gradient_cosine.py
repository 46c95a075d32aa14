"""The training graph's input gradient against the classifier's true one.

  python benchmarks/gradient_cosine.py --checkpoints=pretrained/teacher_mnist_cpu,pretrained/ntat_mnist_cpu

For each checkpoint and target (PriK, PosK with the shipped cosine k-means;
PriL, PosL), the gradient of the target's margin (`attacks.margins`) with
respect to the image, with the SCAE's stop-gradients (gradient='code') and
without them ('full'), on --num_samples MNIST test digits (seed 0, as
run/attack.py draws them). Prints JSON: per target, the median, 10th
percentile and minimum of the per-sample cosine between the two, and the
median ratio of their norms (code / full). The forward values agree bit for
bit (tests/test_true_gradient.py); only the gradients differ.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_list('checkpoints', ['pretrained/teacher_mnist_cpu'],
                  'Checkpoints with their k-means beside.')
flags.DEFINE_list('targets', ['PriK', 'PosK', 'PriL', 'PosL'], 'Targets.')
flags.DEFINE_integer('num_samples', 200, 'MNIST test samples.')
flags.DEFINE_string('data_dir', None, 'Folder of the IDX files.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import classifiers, margins  # pylint: disable=g-import-not-at-top
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  import samples  # pylint: disable=g-import-not-at-top

  x, y = samples.mnist_test_digits(FLAGS.num_samples, FLAGS.data_dir)
  report = {}
  for path in FLAGS.checkpoints:
    loaded = loading.load_model(path)
    for name in FLAGS.targets:
      kind = classifiers.feature_kind_of(name)
      km = loaded.kmeans.get(f'{kind}_cosine') if name.endswith('K') else None
      grads = {}
      for gradient in ('code', 'full'):
        target = margins.margin_target(classifiers.make_classifier(
            loaded.model, name, km, gradient=gradient))

        @tf.function
        def grad_of(x, y, target=target):
          with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(target(x, y)[0])
          return tape.gradient(total, x)

        grads[gradient] = np.concatenate([
            grad_of(x[i:i + 100], y[i:i + 100]).numpy().reshape(-1, 1600)
            for i in range(0, FLAGS.num_samples, 100)])
      code, full = grads['code'], grads['full']
      norm_code = np.linalg.norm(code, axis=1)
      norm_full = np.linalg.norm(full, axis=1)
      cos = (code * full).sum(1) / np.maximum(norm_code * norm_full, 1e-30)
      report[f'{path}:{name}'] = dict(
          cosine_median=round(float(np.median(cos)), 4),
          cosine_p10=round(float(np.percentile(cos, 10)), 4),
          cosine_min=round(float(cos.min()), 4),
          norm_ratio_median=round(float(np.median(
              norm_code / np.maximum(norm_full, 1e-30))), 4))
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  app.run(main)
