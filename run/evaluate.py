"""Evaluates a trained SCAE: unsupervised k-means and linear-probe accuracy.

  python run/evaluate.py --checkpoint=runs/mnist_teacher --dataset=mnist
  python run/evaluate.py --checkpoint=path/to/original/model.ckpt \\
      --kmeans=both --max_examples=2000

--checkpoint is a training log directory (its latest checkpoint, also under
`<dir>/ckpt/`), a TF2 checkpoint prefix of the port, or an original TF1
checkpoint (upstream or the paper authors' fork). The model's prior and
posterior capsule presences are computed for the train and test splits; a
k-means (k = number of classes) is fitted on the train features and its
clusters matched to labels on train (see `scae_tf/kmeans.py`):

  --kmeans=cosine     the fork's k-means, whose numbers the paper reports
                      (cosine distance, k-means++, 1000 full-data steps);
  --kmeans=euclidean  upstream's eval (scikit-learn KMeans, 1000 iterations);
  --kmeans=both.

Accuracies are reported on test, train+test (as the fork reports them) and
train, plus test with the clusters re-matched on test (upstream's protocol),
and the linear probes' accuracies. `--seeds=1,2,3` also refits the k-means with
those seeds and reports the spread of the test accuracy, and the accuracy of
the fit with the smallest mean distance to its train features (the fit that
keeping the best of several k-means restarts would choose). Writes, beside the checkpoint unless
--out=PREFIX is given:
  <prefix>.kmeans_<prior|posterior>_<metric>.npz   the k-means classifiers
                                                   (`KMeansClassifier.load`)
  <prefix>.eval.json                               all accuracies + settings
and prints a table and the JSON. Errors (unknown dataset or config, missing
checkpoint or data) exit with status 1 and write nothing.
"""

import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from scae_tf import cli

DATASETS = ('mnist', 'fashion_mnist')
PREPROCESS = ('resize', 'pad_center', 'pad_shift')
KMEANS = {'cosine': ('cosine',), 'euclidean': ('euclidean',),
          'both': ('cosine', 'euclidean')}

flags.DEFINE_string('checkpoint', None,
                    'Training log directory, TF2 checkpoint prefix or '
                    'original TF1 checkpoint.')
flags.DEFINE_string('dataset', 'mnist', f'One of {DATASETS}.')
flags.DEFINE_string('config', None,
                    'Named config (scae_tf.configs). Default: the config '
                    'saved beside a TF2 checkpoint, else the dataset\'s name.')
flags.DEFINE_string('preprocess', 'resize',
                    f'One of {PREPROCESS} (resize: the paper\'s default).')
flags.DEFINE_string('data_dir', None,
                    'Folder of the IDX files (default: scae_tf.data search).')
flags.DEFINE_string('kmeans', 'cosine', f'One of {tuple(KMEANS)}.')
flags.DEFINE_integer('seed', 0, 'Seed of k-means (and of pad_shift).')
flags.DEFINE_integer('batch_size', 500, 'Batch size of the forward passes.')
flags.DEFINE_integer('max_examples', None,
                     'Use at most this many examples of each split (the '
                     'first ones), for quick runs.')
flags.DEFINE_integer('k', None, 'Number of clusters (default: number of '
                     'classes).')
flags.DEFINE_integer('n_iter', 1000, 'k-means training steps / iterations.')
flags.DEFINE_integer('n_init', 10, 'scikit-learn restarts (euclidean).')
flags.DEFINE_list('seeds', [], 'More k-means seeds: refit with each and '
                  'report the test accuracies, their min / mean / max and '
                  'the accuracy of the fit with the best k-means objective '
                  '(together with --seed) under "seed_spread".')
flags.DEFINE_string('out', None,
                    'Output prefix (default: the checkpoint prefix).')
flags.mark_flag_as_required('checkpoint')
FLAGS = flags.FLAGS


class UsageError(ValueError):
  """A bad flag value."""


def _check_flags():
  for name, choices in (('dataset', DATASETS), ('preprocess', PREPROCESS),
                        ('kmeans', tuple(KMEANS))):
    value = getattr(FLAGS, name)
    if value not in choices:
      raise UsageError(f'unknown --{name}={value!r}; expected one of '
                       f'{", ".join(choices)}.')
  for name in ('batch_size', 'n_iter', 'n_init'):
    if getattr(FLAGS, name) < 1:
      raise UsageError(f'--{name} must be positive.')
  try:
    [int(s) for s in FLAGS.seeds]
  except ValueError:
    raise UsageError(f'--seeds takes integers, got {FLAGS.seeds}.') from None
  for name in ('max_examples', 'k'):
    value = getattr(FLAGS, name)
    if value is not None and value < 1:
      raise UsageError(f'--{name} must be positive.')


def resolve_checkpoint(path):
  """A checkpoint prefix from a prefix, an .index file, a directory holding
  checkpoints, or a training log directory (checkpoints under `ckpt/`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    for folder in (path, os.path.join(path, 'ckpt')):
      if os.path.isdir(folder):
        latest = tf.train.latest_checkpoint(folder)
        if latest is not None:
          return latest
    raise FileNotFoundError(f'no checkpoint found in directory {path!r} '
                            'nor in its ckpt/ subdirectory.')
  if not (os.path.exists(path) or os.path.exists(path + '.index')
          or path.endswith('.index')):
    raise FileNotFoundError(f'checkpoint {path!r} does not exist.')
  return checkpoints.resolve_checkpoint(path)


def pick_config(prefix, tf1):
  """(config, where it came from): --config, else the config saved beside a
  TF2 checkpoint, else the dataset's name."""
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  if FLAGS.config is not None:
    return configs.get_config(FLAGS.config), 'flag'
  saved = None if tf1 else checkpoints.read_config(prefix)
  if saved is not None:
    return saved, 'saved beside the checkpoint'
  return configs.get_config(FLAGS.dataset), 'dataset name'


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def main(argv):
  if cli.extra_args_error(argv):
    return 1
  try:
    _check_flags()
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1

  # Imported here so that --help and flag errors answer without TensorFlow.
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  from scae_tf import data  # pylint: disable=g-import-not-at-top
  from scae_tf import kmeans  # pylint: disable=g-import-not-at-top
  from scae_tf.model import SCAE  # pylint: disable=g-import-not-at-top

  start = time.time()
  try:
    prefix = resolve_checkpoint(FLAGS.checkpoint)
    tf1 = checkpoints.is_tf1_checkpoint(prefix)
    config, config_source = pick_config(prefix, tf1)
    model = SCAE(config)
    checkpoints.load_checkpoint(model, prefix)
    data_dir = data.resolve_data_dir(FLAGS.dataset, FLAGS.data_dir)
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  _log(f'checkpoint: {prefix} ({"TF1" if tf1 else "TF2"}); config '
       f'{config.name!r} ({config_source}); data: {data_dir}')
  if config.dataset != FLAGS.dataset:
    _log(f'warning: config {config.name!r} was made for dataset '
         f'{config.dataset!r}, evaluating on {FLAGS.dataset!r}.')

  feats, labels, seconds = {}, {}, {}
  try:
    for split in ('train', 'test'):
      t = time.time()
      images, split_labels = data.load_split(data_dir, split)
      if FLAGS.max_examples is not None:
        images = images[:FLAGS.max_examples]
        split_labels = split_labels[:FLAGS.max_examples]
      rng = np.random.default_rng([FLAGS.seed, split == 'test'])
      batches = ((data.preprocess(images[i:i + FLAGS.batch_size],
                                  FLAGS.preprocess, rng=rng,
                                  canvas_size=config.canvas_size),
                  split_labels[i:i + FLAGS.batch_size])
                 for i in range(0, len(images), FLAGS.batch_size))
      feats[split] = kmeans.collect_features(
          model, batches, progress=True, desc=f'{split} features',
          total=len(images))
      labels[split] = feats[split].pop('labels')
      seconds[f'features_{split}'] = round(time.time() - t, 2)
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1

  t = time.time()
  k = FLAGS.k or config.num_classes
  results, classifiers = kmeans.evaluate_kmeans(
      feats['train'], labels['train'], feats['test'], labels['test'],
      metrics=KMEANS[FLAGS.kmeans], k=k, n_iter=FLAGS.n_iter,
      seed=FLAGS.seed, n_classes=config.num_classes, n_init=FLAGS.n_init,
      checkpoint=prefix, log=_log)
  seconds['kmeans'] = round(time.time() - t, 2)
  spread = None
  if FLAGS.seeds:
    t = time.time()
    spread = kmeans.seed_spread(
        feats['train'], labels['train'], feats['test'], labels['test'],
        seeds=[FLAGS.seed] + [int(s) for s in FLAGS.seeds],
        metrics=KMEANS[FLAGS.kmeans], log=_log, k=k, n_iter=FLAGS.n_iter,
        n_classes=config.num_classes, n_init=FLAGS.n_init)
    seconds['seed_spread'] = round(time.time() - t, 2)

  out = FLAGS.out or prefix
  saved = {}
  for (kind, metric), clf in sorted(classifiers.items()):
    clf.metadata.update(dataset=FLAGS.dataset, preprocess=FLAGS.preprocess,
                        config=config.name)
    saved[f'{kind}_{metric}'] = clf.save(f'{out}.kmeans_{kind}_{metric}.npz')
  seconds['total'] = round(time.time() - start, 2)
  report = dict(
      checkpoint=prefix, checkpoint_format='tf1' if tf1 else 'tf2',
      config=config.name, config_source=config_source,
      dataset=FLAGS.dataset, data_dir=str(data_dir),
      preprocess=FLAGS.preprocess, seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, max_examples=FLAGS.max_examples,
      kmeans=dict(variants=list(KMEANS[FLAGS.kmeans]), k=k,
                  n_iter=FLAGS.n_iter, n_init=FLAGS.n_init,
                  cluster_to_label_fitted_on='train'),
      results=results, seed_spread=spread, classifiers=saved,
      seconds=seconds)
  json_path = f'{out}.eval.json'
  tmp = json_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, json_path)
  report['eval_json'] = json_path

  print(kmeans.format_results(results))
  for metric, per_kind in (spread or {}).items():
    for kind, r in per_kind.items():
      print(f'k-means {metric} / {kind} test accuracy over seeds '
            f'{list(r["per_seed"])}: min {r["min"]:.4f} mean {r["mean"]:.4f} '
            f'max {r["max"]:.4f}; the fit nearest its train features (seed '
            f'{r["best_by_distance"]["seed"]}) gives '
            f'{r["best_by_distance"]["test"]:.4f}')
  print()
  print(json.dumps(report, indent=1))
  return 0


if __name__ == '__main__':
  app.run(main)
