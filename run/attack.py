"""Evaluates the robustness of an SCAE classifier to the evasion attack
(paper section 4 / 6.2; the defence code's `utilities.attack` protocol).

  python run/attack.py --checkpoint=runs/mnist_teacher --classifier=PosK
  python run/attack.py --checkpoint=path/model.ckpt --classifier=PriL \\
      --dataset=fashion_mnist --num_samples=1000 --out_dir=results/f_pril
  python run/attack.py --plot_only --out_dir=results/f_pril
  python run/attack.py --plot_only --compare=dirA,dirB --labels=SCAE,HAT \\
      --out_dir=results/compare

--checkpoint: a training log directory, a TF2 checkpoint prefix of the port,
or an original / fork TF1 checkpoint. --classifier: PriK / PosK (k-means on
the prior / posterior presences; --kmeans defaults to the file that
`run/evaluate.py` writes beside the checkpoint,
`<prefix>.kmeans_<prior|posterior>_cosine.npz`) or PriL / PosL (the linear
probes). --num_samples random samples (seeded by --seed) of --split
(default: the paper's, MNIST test / Fashion-MNIST train) are attacked with
--preset (attacks.evasion.PRESETS; the flags after it override single
settings), --batch_size at a time. Finished batches are saved under
<out_dir>/batches/ and skipped on a restart with the same settings.

Writes to --out_dir: l2.npz (per-sample perturbation amount: 0 for clean
errors, inf for failed attacks), adversarial.npz, summary.json, summary.md,
robust_accuracy.json (accuracy at every threshold 0..--plot_max) and
accuracy_vs_l2.png (paper Figures 2-5). Errors exit with status 1.
"""

import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from scae_tf import cli

DATASETS = ('mnist', 'fashion_mnist')
PREPROCESS = ('resize', 'pad_center', 'pad_shift')
CLASSIFIERS = ('PriK', 'PosK', 'PriL', 'PosL')

flags.DEFINE_string('checkpoint', None, 'Training log directory, TF2 '
                    'checkpoint prefix or original / fork TF1 checkpoint.')
flags.DEFINE_string('config', None, 'Named config (scae_tf.configs); default: '
                    'the one saved beside a TF2 checkpoint, else --dataset.')
flags.DEFINE_string('classifier', 'PosK', f'One of {CLASSIFIERS}.')
flags.DEFINE_string('kmeans', None, 'KMeansClassifier file (.npz / .json) '
                    'for PriK / PosK; default: beside the checkpoint.')
flags.DEFINE_string('dataset', 'mnist', f'One of {DATASETS}.')
flags.DEFINE_string('split', None, 'train or test; default: test for MNIST, '
                    'train for Fashion-MNIST (the paper\'s protocol).')
flags.DEFINE_string('data_dir', None, 'Folder of the IDX files.')
flags.DEFINE_string('preprocess', 'resize', f'One of {PREPROCESS}.')
flags.DEFINE_integer('num_samples', 5000, 'Random samples to attack.')
flags.DEFINE_integer('batch_size', 100, 'Samples attacked together.')
flags.DEFINE_integer('seed', 0, 'Seeds the sample choice and the attack.')
flags.DEFINE_string('preset', 'paper_eval', 'Attack preset.')
flags.DEFINE_integer('outer_iterations', None, 'Override the preset.')
flags.DEFINE_integer('inner_iterations', None, 'Override the preset.')
flags.DEFINE_float('learning_rate', None, 'Override the preset.')
flags.DEFINE_float('const_init', None, 'Override the preset (alpha_0).')
flags.DEFINE_string('optimizer', None, 'Override: adam, rmsprop or sign.')
flags.DEFINE_boolean('use_mask', None, 'Override: blurred-image mask.')
flags.DEFINE_string('subset', None, 'Override: batch (fork) or example '
                    '(paper formula 4).')
flags.DEFINE_string('capsule_loss', None, 'Override: squared (fork) or sum '
                    '(paper formula 3).')
flags.DEFINE_string('const_coupling', None, 'Override: batch (fork) or '
                    'example.')
flags.DEFINE_string('success', None, 'Override: label (fork) or '
                    'clean_prediction (paper).')
flags.DEFINE_string('out_dir', None, 'Output folder; default: '
                    'results/attack_<dataset>_<classifier>_<preset>.')
flags.DEFINE_boolean('overwrite', False, 'Discard the saved batches of a '
                     'previous run with other settings.')
flags.DEFINE_float('threshold', None, 'L2 threshold of the summary; default: '
                   'the paper\'s (4 MNIST, 5 Fashion-MNIST).')
flags.DEFINE_float('plot_max', None, 'Largest threshold of the curve; '
                   'default: threshold + 1.')
flags.DEFINE_boolean('plot_only', False, 'Only redraw the reports from the '
                     'saved results of --out_dir (or of --compare).')
flags.DEFINE_list('compare', None, 'Result folders to overlay in one plot '
                  '(with --plot_only; written to --out_dir).')
flags.DEFINE_list('labels', None, 'Curve labels for --compare.')
flags.DEFINE_boolean('progress', True, 'Show a progress bar.')
FLAGS = flags.FLAGS

OVERRIDES = ('outer_iterations', 'inner_iterations', 'learning_rate',
             'const_init', 'optimizer', 'use_mask', 'subset', 'capsule_loss',
             'const_coupling', 'success')


class UsageError(ValueError):
  """A bad flag value."""


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def _check_flags():
  for name, choices in (('dataset', DATASETS), ('preprocess', PREPROCESS)):
    if getattr(FLAGS, name) not in choices:
      raise UsageError(f'unknown --{name}={getattr(FLAGS, name)!r}; expected '
                       f'one of {", ".join(choices)}.')
  if FLAGS.classifier.lower() not in [c.lower() for c in CLASSIFIERS]:
    raise UsageError(f'unknown --classifier={FLAGS.classifier!r}; expected '
                     f'one of {", ".join(CLASSIFIERS)}.')
  if FLAGS.split not in (None, 'train', 'test'):
    raise UsageError(f'unknown --split={FLAGS.split!r}; expected train or '
                     'test.')
  for name in ('num_samples', 'batch_size'):
    if getattr(FLAGS, name) < 1:
      raise UsageError(f'--{name} must be positive.')
  if FLAGS.compare and not FLAGS.plot_only:
    raise UsageError('--compare needs --plot_only.')
  if FLAGS.compare and not FLAGS.out_dir:
    raise UsageError('--compare needs --out_dir for the overlaid plot.')
  if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.compare or []):
    raise UsageError('--labels needs one label per --compare folder.')
  if FLAGS.plot_only and not (FLAGS.compare or FLAGS.out_dir):
    raise UsageError('--plot_only needs --out_dir or --compare.')
  if not FLAGS.plot_only and not FLAGS.checkpoint:
    raise UsageError('--checkpoint is required.')


def _thresholds(dataset):
  from attacks import protocol  # pylint: disable=g-import-not-at-top
  t = FLAGS.threshold
  if t is None:
    t = protocol.PAPER_THRESHOLDS[dataset]
  return t, FLAGS.plot_max if FLAGS.plot_max is not None else t + 1.


def _resolve_checkpoint(path):
  """A checkpoint prefix from a prefix, an .index file, a directory with
  checkpoints, or a training log directory (checkpoints under ckpt/)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    for folder in (path, os.path.join(path, 'ckpt')):
      latest = tf.train.latest_checkpoint(folder) \
          if os.path.isdir(folder) else None
      if latest is not None:
        return latest
    raise FileNotFoundError(f'no checkpoint found in {path!r} nor in its '
                            'ckpt/ subdirectory.')
  return checkpoints.resolve_checkpoint(path)


def _plot_only():
  from attacks import protocol  # pylint: disable=g-import-not-at-top
  if FLAGS.compare:
    curves, thresholds = [], []
    for i, folder in enumerate(FLAGS.compare):
      arrays, settings = protocol.load_results(folder)
      label = (FLAGS.labels[i] if FLAGS.labels else
               f'{os.path.basename(os.path.normpath(folder))}')
      curves.append((label, arrays['perturbation']))
      thresholds.append(settings.get('dataset', FLAGS.dataset))
    t, t_max = _thresholds(thresholds[0])
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    path = protocol.plot_accuracy_vs_l2(
        curves, os.path.join(FLAGS.out_dir, 'accuracy_vs_l2.png'), t_max, t)
    rows = ['| run | clean accuracy | accuracy at L2 <= %g |' % t,
            '| --- | --- | --- |']
    for label, p in curves:
      rows.append(f'| {label} | {protocol.accuracy_at(p, 0.):.4f} | '
                  f'{protocol.accuracy_at(p, t):.4f} |')
    with open(os.path.join(FLAGS.out_dir, 'compare.md'), 'w') as f:
      f.write('\n'.join(rows) + '\n')
    print('\n'.join(rows))
    _log(f'wrote {path}')
    return 0
  arrays, settings = protocol.load_results(FLAGS.out_dir)
  t, t_max = _thresholds(settings.get('dataset', FLAGS.dataset))
  summary = protocol.write_reports(FLAGS.out_dir, arrays['perturbation'],
                                   arrays['clean_correct'], settings, t,
                                   t_max)
  print(protocol.markdown_table(summary))
  return 0


def _attack():
  import dataclasses  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from attacks import classifiers, evasion, protocol
  from scae_tf import checkpoints, configs, data
  from scae_tf.model import SCAE  # pylint: disable=g-import-not-at-top

  name = classifiers.classifier_name(FLAGS.classifier)
  overrides = {k: getattr(FLAGS, k) for k in OVERRIDES
               if getattr(FLAGS, k) is not None}
  attack_config = evasion.get_config(FLAGS.preset, seed=FLAGS.seed,
                                     **overrides)
  split = FLAGS.split or protocol.DEFAULT_SPLITS[FLAGS.dataset]
  threshold, t_max = _thresholds(FLAGS.dataset)
  out_dir = FLAGS.out_dir or os.path.join(
      'results', f'attack_{FLAGS.dataset}_{name}_{FLAGS.preset}')

  prefix = _resolve_checkpoint(FLAGS.checkpoint)
  tf1 = checkpoints.is_tf1_checkpoint(prefix)
  saved = None if (tf1 or FLAGS.config) else checkpoints.read_config(prefix)
  config = configs.get_config(FLAGS.config or FLAGS.dataset) \
      if saved is None else saved
  model = SCAE(config.without_noise())  # attacks run without noise
  checkpoints.load_checkpoint(model, prefix)
  kmeans_path = None
  if name.endswith('K'):
    kmeans_path = FLAGS.kmeans or classifiers.kmeans_path_beside(prefix, name)
    if not os.path.exists(kmeans_path):
      raise FileNotFoundError(
          f'k-means classifier {kmeans_path!r} not found; run '
          'run/evaluate.py on the checkpoint or pass --kmeans.')
  target = classifiers.make_classifier(model, name, kmeans_path)
  attack = evasion.CapsuleAttack(target, attack_config)

  images_u8, labels = data.load_dataset(FLAGS.dataset, split, FLAGS.data_dir)
  if FLAGS.num_samples > len(images_u8):
    raise UsageError(f'--num_samples={FLAGS.num_samples} exceeds the '
                     f'{len(images_u8)} examples of the {split} split.')
  indices = np.random.default_rng(FLAGS.seed).choice(
      len(images_u8), FLAGS.num_samples, replace=False)
  images = data.preprocess(images_u8[indices], FLAGS.preprocess,
                           rng=np.random.default_rng([FLAGS.seed, 1]),
                           canvas_size=config.canvas_size)
  labels = labels[indices]

  settings = dict(
      checkpoint=os.path.abspath(prefix),
      checkpoint_format='tf1' if tf1 else 'tf2', config=config.name,
      classifier=name,
      kmeans=os.path.abspath(kmeans_path) if kmeans_path else None,
      dataset=FLAGS.dataset, split=split, preprocess=FLAGS.preprocess,
      num_samples=FLAGS.num_samples, batch_size=FLAGS.batch_size,
      seed=FLAGS.seed, preset=FLAGS.preset,
      attack=dataclasses.asdict(attack_config))
  protocol.check_settings(out_dir, settings, FLAGS.overwrite)
  _log(f'checkpoint {prefix} ({"TF1" if tf1 else "TF2"}, config '
       f'{config.name}); {name}; {FLAGS.num_samples} samples of '
       f'{FLAGS.dataset}/{split}; preset {FLAGS.preset}; out {out_dir}')
  start = time.time()
  results = protocol.run_protocol(
      attack, images, labels, out_dir, FLAGS.batch_size, FLAGS.seed,
      indices=indices, threshold=threshold, progress=FLAGS.progress)
  summary = protocol.write_outputs(out_dir, results, settings, threshold,
                                   t_max, label=f'{config.name} {name}')
  print(protocol.markdown_table(summary))
  _log(f'done in {time.time() - start:.0f} s; results in {out_dir}')
  return 0


def main(argv):
  if cli.extra_args_error(argv):
    return 1
  try:
    _check_flags()
    return _plot_only() if FLAGS.plot_only else _attack()
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  app.run(main)
