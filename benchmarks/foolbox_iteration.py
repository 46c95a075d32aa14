"""Times one iteration of Foolbox's DDN (and FMN) and of our compiled DDN
(`attacks.ddn`) against one PGD-L2 iteration on the SCAE.

  python benchmarks/foolbox_iteration.py --steps=10 --batch_size=100

The model is a fresh init of --config without noise; the target PosL with
the true gradient (gradient='full'); the images random, the labels random.
Each timed call runs --steps iterations:
  * ddn / fmn: `FoolboxAttack._run_foolbox` (Foolbox's Python loop of
    --steps steps, each one compiled call of the logits under its
    GradientTape, then Foolbox's own check of the result: one more forward
    pass);
  * ddn_tf (with --ours): our DDN, `DDNAttack._run` of preset ddn with
    steps=--steps (one compiled call: --steps steps, then the scoring pass
    of the last point);
  * pgd: one compiled PGD-L2 restart, `PGDAttack._restart` of preset
    pgd_l2 with steps=--steps, restarts=1 (--steps steps, then the scoring
    pass of the last point).
All err high by one forward pass per call, so the ratio is like for like.
After one warm-up call each, --rounds rounds call them in turn (every other
round in reverse order, so that a background load shifts them alike); the
median seconds of a call divided by --steps is the iteration's cost.
Prints JSON with the seconds and each attack's ratio to pgd.
"""

import json
import os
import platform
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string('config', 'mnist', 'Named config.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_integer('steps', 10, 'Iterations per timed call.')
flags.DEFINE_integer('rounds', 3, 'Timed rounds (after one warm-up).')
flags.DEFINE_list('attacks', ['ddn', 'fmn'], 'Foolbox presets to time.')
flags.DEFINE_bool('ours', True, 'Also time our compiled DDN (ddn_tf).')

FLAGS = flags.FLAGS


def calls(model, images, labels, steps, presets, ours=True):
  """{name: zero-argument callable}: the Foolbox runs, our DDN's run
  (`ours`) and the PGD restart."""
  # pylint: disable=protected-access
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import classifiers, ddn, foolbox_attacks, pgd  # pylint: disable=g-import-not-at-top

  target = classifiers.make_classifier(model, 'PosL', gradient='full')
  out = {}
  x_np, y_np = images.numpy(), labels.numpy()
  for preset in presets:
    attack = foolbox_attacks.FoolboxAttack(target, preset, steps=steps)
    out[preset] = (lambda a=attack: a._run_foolbox(x_np, y_np))
  if ours:
    ddn_attack = ddn.DDNAttack(target, 'ddn', steps=steps)
    out['ddn_tf'] = lambda: [t.numpy() for t in ddn_attack._run(images,
                                                                labels)]
  margin_attack = pgd.PGDAttack(target, 'pgd_l2', steps=steps, restarts=1)
  margin, pred = margin_attack._score(images, labels)
  batch = int(images.shape[0])
  eps = tf.fill([batch], np.float32(margin_attack.config.eps))
  args = (images, labels, eps, images, margin, tf.not_equal(pred, labels),
          images, tf.zeros([batch]))
  out['pgd'] = lambda: [t.numpy() for t in margin_attack._restart(*args)]
  return out


def alternating_medians(fns, rounds):
  """{name: median seconds} over `rounds` rounds after a warm-up round."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  times = {name: [] for name in fns}
  names = list(fns)
  for i in range(rounds + 1):
    for name in names[::-1] if i % 2 else names:
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t[1:])) for name, t in times.items()}, times


def main(argv):
  del argv
  import foolbox  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top

  config = configs.get_config(FLAGS.config).without_noise()
  tf.random.set_seed(0)
  images = tf.random.uniform([FLAGS.batch_size, config.canvas_size,
                              config.canvas_size, config.n_channels])
  labels = tf.random.uniform([FLAGS.batch_size], 0, config.num_classes,
                             tf.int64)
  model = SCAE(config)
  fns = calls(model, images, labels, FLAGS.steps, FLAGS.attacks,
              FLAGS.ours)
  medians, raw = alternating_medians(fns, FLAGS.rounds)
  per_step = {k: v / FLAGS.steps for k, v in medians.items()}
  result = dict(
      config=config.name, batch_size=FLAGS.batch_size, steps=FLAGS.steps,
      rounds=FLAGS.rounds, target='PosL', gradient='full',
      tensorflow=tf.__version__, foolbox=foolbox.__version__,
      machine=platform.processor() or platform.machine(),
      cpu_count=os.cpu_count(), load_average=os.getloadavg(),
      seconds_per_iteration={k: round(v, 4) for k, v in per_step.items()},
      ratio_over_pgd={k: round(per_step[k] / per_step['pgd'], 3)
                      for k in fns if k != 'pgd'},
      seconds_per_call={k: [round(s, 3) for s in v] for k, v in raw.items()})
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
