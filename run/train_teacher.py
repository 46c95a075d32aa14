"""Trains the teacher SCAE (paper Table 3), resumably.

  python run/train_teacher.py --dataset=mnist            # paper recipe
  python run/train_teacher.py --dataset=mnist --recipe=cpu
  python run/train_teacher.py --config=mnist_original    # upstream recipe
  python run/train_teacher.py --strategy=mirrored        # all local GPUs

The model config defaults to the dataset's, the recipe to the config's
(`scae_tf/recipes.py`); any flag below that changes the recipe labels the run
a deviation. Re-running the same command resumes from the latest checkpoint
in --logdir (model, optimiser, step and data position); Ctrl-C or SIGTERM
saves the current step first and prints the command that resumes. Errors,
a NaN included, are one line and a non-zero status; a bad flag is refused
before TensorFlow loads.
"""

from absl import app
from absl import flags

from scae_tf import cli

flags.DEFINE_string('dataset', 'mnist', 'mnist or fashion_mnist.')
flags.DEFINE_string('config', None, 'Named model config (default: dataset).')
flags.DEFINE_string('recipe', None, 'Training recipe: paper, upstream or cpu '
                    '(default: the config\'s).')
flags.DEFINE_integer('batch_size', None, 'Global batch (default: recipe).')
flags.DEFINE_integer('epochs', None, 'Epochs (default: recipe).')
flags.DEFINE_integer('max_train_steps', None, 'Train this many steps '
                     'instead of --epochs.')
flags.DEFINE_float('lr', None, 'Learning rate (default: recipe).')
flags.DEFINE_bool('lr_decay', None, 'Exponential decay 0.96 / 10k steps as '
                  'the fork; --nolr_decay as upstream (default: recipe).')
flags.DEFINE_string('preprocess', None, 'resize (paper), pad_shift '
                    '(upstream) or pad_center (default: recipe).')
flags.DEFINE_bool('noise', None, 'Presence noise as in the config '
                  '(default: recipe).')
flags.DEFINE_string('strategy', 'default', 'tf.distribute strategy: default '
                    '(one device), mirrored (all local GPUs) or multiworker '
                    '(several machines; set TF_CONFIG on each).')
flags.DEFINE_string('init_from', None, 'Initial weights: TF1 or TF2 '
                    'checkpoint (ignored when resuming).')
flags.DEFINE_bool('kmeans_every_epoch', False, 'Also fit the fork\'s cosine '
                  'k-means on the train split after every epoch and log its '
                  'test accuracy (about 40 s per MNIST epoch on 2 cores).')
cli.define_run_flags('runs/teacher_<dataset>_<recipe>')
# --helpshort lists the shared run flags (--logdir, ...) with this script's.
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def _run_spec():
  """The run the flags ask for; building it checks everything that needs no
  model, before TensorFlow loads: a bad flag is refused in a second."""
  # pylint: disable=g-import-not-at-top
  from scae_tf.teacher_run import RecipeOverrides
  from scae_tf.teacher_run import TeacherRun
  # pylint: enable=g-import-not-at-top
  return TeacherRun(
      dataset=FLAGS.dataset, config=FLAGS.config, recipe=FLAGS.recipe,
      overrides=RecipeOverrides(
          batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
          train_steps=FLAGS.max_train_steps, learning_rate=FLAGS.lr,
          lr_decay=FLAGS.lr_decay, preprocess=FLAGS.preprocess,
          noise=FLAGS.noise),
      logdir=FLAGS.logdir, seed=FLAGS.seed, init_from=FLAGS.init_from,
      data_dir=FLAGS.data_dir, save_every=FLAGS.save_every,
      kmeans_every_epoch=FLAGS.kmeans_every_epoch, strategy=FLAGS.strategy,
      overwrite=FLAGS.overwrite)


def _train():
  run = _run_spec()
  # Imported here so that --help and a bad flag answer without loading
  # TensorFlow.
  from scae_tf import teacher  # pylint: disable=g-import-not-at-top
  teacher.train_teacher(run, progress=FLAGS.progress)


def main(argv):
  return cli.run(argv, _train, resumable=True)


if __name__ == '__main__':
  app.run(main)
