"""Trains the teacher SCAE (paper Table 3), resumably.

  python run/train_teacher.py --dataset=mnist --logdir=runs/teacher_mnist
  python run/train_teacher.py --dataset=mnist --preset=cpu   # 2-core budget

Defaults are the paper's recipe (fork train.py): config Table 1, RMSProp
lr 3e-5 with exponential decay, batch 100, 300 epochs, config noise on, data
resized 28 -> 40. Re-running the same command resumes from the latest
checkpoint in --logdir (model, optimiser, step and data position).
"""

import os
import sys

from absl import app
from absl import flags

flags.DEFINE_string('dataset', 'mnist', 'mnist or fashion_mnist.')
flags.DEFINE_string('config', None, 'Named model config (default: dataset).')
flags.DEFINE_string('preset', 'paper', 'Training recipe: paper or cpu.')
flags.DEFINE_integer('batch_size', None, 'Batch size (default: preset).')
flags.DEFINE_integer('epochs', None, 'Epochs (default: preset).')
flags.DEFINE_integer('max_train_steps', None, 'Stop after this many steps '
                     '(overrides --epochs).')
flags.DEFINE_float('lr', None, 'Learning rate (default: preset).')
flags.DEFINE_bool('lr_decay', None, 'Exponential decay 0.96 / 10k steps as '
                  'the fork; --nolr_decay reproduces upstream (default: '
                  'preset).')
flags.DEFINE_string('preprocess', 'resize', 'resize (paper), pad_shift '
                    '(upstream) or pad_center.')
flags.DEFINE_string('logdir', None, 'Run directory (default: '
                    'runs/teacher_<dataset>_<preset>).')
flags.DEFINE_integer('seed', 0, 'Seed of the init and the data order.')
flags.DEFINE_string('init_from', None, 'Initial weights: TF1 or TF2 '
                    'checkpoint (ignored when resuming).')
flags.DEFINE_string('data_dir', None, 'Folder with the IDX files.')
flags.DEFINE_integer('save_every', 1000, 'Checkpoint every N steps (and at '
                     'every epoch end).')
flags.DEFINE_bool('noise', True, 'Presence noise as in the config.')
flags.DEFINE_bool('overwrite', False, 'Delete a different run in --logdir.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.DEFINE_bool('kmeans_every_epoch', False, 'Also fit the fork\'s cosine '
                  'k-means on the train split after every epoch and log its '
                  'test accuracy (about 40 s per MNIST epoch on 2 cores).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import checkpoints, configs, data, training  # pylint: disable=g-import-not-at-top
  from scae_tf.model import SCAE  # pylint: disable=g-import-not-at-top
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top

  try:
    data.get_dataset_spec(FLAGS.dataset)
    preset = configs.get_preset(FLAGS.preset)
    config = configs.get_config(FLAGS.config or FLAGS.dataset)
    batch_size = FLAGS.batch_size or preset.batch_size
    config = config.replace(batch_size=batch_size)
    stream = data.BatchStream(FLAGS.dataset, 'train', batch_size,
                              preprocess=FLAGS.preprocess, seed=FLAGS.seed,
                              data_dir=FLAGS.data_dir)
    epochs = FLAGS.epochs or preset.epochs
    total_steps = FLAGS.max_train_steps or epochs * stream.steps_per_epoch
    settings = training.run_settings(
        config, dataset=FLAGS.dataset, preset=preset.name,
        lr=FLAGS.lr or preset.learning_rate,
        lr_decay=preset.lr_decay if FLAGS.lr_decay is None else FLAGS.lr_decay,
        preprocess=FLAGS.preprocess, seed=FLAGS.seed, noise=FLAGS.noise,
        init_from=FLAGS.init_from)
    logdir = FLAGS.logdir or os.path.join(
        'runs', f'teacher_{FLAGS.dataset}_{preset.name}')
    resumed = training.prepare_logdir(logdir, settings, FLAGS.overwrite)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1

  tf.random.set_seed(FLAGS.seed)
  np.random.seed(FLAGS.seed)  # the template init draws from numpy
  model = SCAE(config)
  optimizer = TF1RMSProp.for_config(
      model.trainable_variables, config, lr_decay=settings['lr_decay'],
      learning_rate=settings['lr'])
  if FLAGS.init_from and not resumed:
    try:
      report = checkpoints.load_checkpoint(model, FLAGS.init_from)
    except (ValueError, FileNotFoundError) as e:
      print(f'error: --init_from: {e}', file=sys.stderr)
      return 1
    print(f'initialised from {report["path"]}')
  print(f'{"resuming" if resumed else "starting"} {logdir}: config '
        f'{config.name}, preset {preset.name}, {total_steps} steps '
        f'({stream.steps_per_epoch} per epoch)')

  def eval_batches():
    return data.eval_batches(FLAGS.dataset, 'test', 500,
                             preprocess=FLAGS.preprocess,
                             data_dir=FLAGS.data_dir)

  def kmeans_curve(step, wall_time):
    from scae_tf import kmeans  # pylint: disable=g-import-not-at-top
    feats = {}
    for split in ('train', 'test'):
      feats[split] = kmeans.collect_features(model, data.eval_batches(
          FLAGS.dataset, split, 500, preprocess=FLAGS.preprocess,
          data_dir=FLAGS.data_dir))
    record = dict(step=step, epoch=step // stream.steps_per_epoch, eval=True,
                  kmeans=True, wall_time=wall_time)
    for kind in ('prior', 'posterior'):
      clf = kmeans.fit_kmeans_classifier(feats['train'],
                                         feats['train']['labels'],
                                         feature=kind, seed=FLAGS.seed)
      record[f'kmeans_{kind}_test_acc'] = clf.accuracy(
          feats['test'], feats['test']['labels'])
    training.JsonlLog(os.path.join(logdir, training.LOG_FILE)).write(record)
    print(f'epoch {record["epoch"]}: k-means test accuracy prior '
          f'{record["kmeans_prior_test_acc"]:.4f}, posterior '
          f'{record["kmeans_posterior_test_acc"]:.4f}')

  try:
    metrics = training.train_loop(
        model, optimizer, stream, logdir, total_steps, noise=FLAGS.noise,
        save_every=FLAGS.save_every, eval_batches=eval_batches,
        progress=FLAGS.progress, seed=FLAGS.seed,
        on_epoch_end=kmeans_curve if FLAGS.kmeans_every_epoch else None)
  except training.NonFiniteLossError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'done: step {int(optimizer.step.numpy())}, loss '
        f'{metrics.get("loss", float("nan")):.2f}')
  return 0


if __name__ == '__main__':
  app.run(main)
