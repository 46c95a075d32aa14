"""The defences' generator with and without XLA around its attack loop.

  python benchmarks/xla_generator.py --checkpoint=pretrained/teacher_mnist_cpu

Times `CapsuleAttack.in_graph` of the paper_train preset (as the defences
run it: inside an uncompiled tf.function, target PosL) with one outer
iteration of --inner steps, plain and with `jit_compile=True` (the inner
loop compiled by XLA, nested in the plain graph: `--xla_generator` of
run/train_defense.py), on --batch_size MNIST test digits. Rounds alternate
the two and reverse their order every other round; prints JSON with the
median seconds per attack iteration of each and their ratio, and how many
examples' success and L2 agree (the attack is chaotic: other rounding
moves some of them).
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string('checkpoint', 'pretrained/teacher_mnist_cpu',
                    'The attacked model.')
flags.DEFINE_integer('batch_size', 100, 'Images per call.')
flags.DEFINE_integer('inner', 30, 'Attack iterations per timed call.')
flags.DEFINE_integer('rounds', 4, 'Timed rounds of each.')
flags.DEFINE_string('data_dir', None, 'Folder of the IDX files.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import evasion  # pylint: disable=g-import-not-at-top
  from scae_tf import data, loading  # pylint: disable=g-import-not-at-top

  model = loading.load_model(FLAGS.checkpoint, kmeans=False).model
  images, labels = next(iter(data.eval_batches(
      'mnist', 'test', FLAGS.batch_size, preprocess='resize',
      data_dir=FLAGS.data_dir)))
  x = tf.constant(np.asarray(images, np.float32))
  y = tf.constant(np.asarray(labels, np.int64))
  calls, outputs = {}, {}
  rng = tf.random.Generator.from_seed(0)
  for mode in ('plain', 'xla'):
    attack = evasion.make_attack(model, 'paper_train', outer_iterations=1,
                                 inner_iterations=FLAGS.inner,
                                 jit_compile=mode == 'xla')
    calls[mode] = tf.function(
        lambda x, y, attack=attack: attack.in_graph(x, y, rng))
    rng.reset_from_seed(0)  # both from the same draws
    outputs[mode] = [t.numpy() for t in calls[mode](x, y)]  # compiles
  times = {mode: [] for mode in calls}
  for r in range(FLAGS.rounds):
    for mode in (('plain', 'xla') if r % 2 == 0 else ('xla', 'plain')):
      start = time.perf_counter()
      calls[mode](x, y)[2].numpy()
      times[mode].append((time.perf_counter() - start) / FLAGS.inner)
  median = {mode: float(np.median(t)) for mode, t in times.items()}
  plain, xla = outputs['plain'], outputs['xla']
  print(json.dumps(dict(
      seconds_per_iteration=median,
      xla_over_plain=round(median['xla'] / median['plain'], 3),
      success_agrees=float(np.mean(plain[1] == xla[1])),
      l2_max_difference=float(np.max(np.abs(
          np.where(np.isfinite(plain[2]), plain[2], 0.)
          - np.where(np.isfinite(xla[2]), xla[2], 0.)))),
      batch_size=FLAGS.batch_size, inner=FLAGS.inner), indent=1))


if __name__ == '__main__':
  app.run(main)
