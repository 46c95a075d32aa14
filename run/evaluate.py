"""Evaluates a trained SCAE: unsupervised k-means and linear-probe accuracy.

  python run/evaluate.py --checkpoint=runs/mnist_teacher --dataset=mnist
  python run/evaluate.py --checkpoint=path/to/original/model.ckpt \\
      --kmeans=both --max_examples=2000

--checkpoint is a training log directory (its latest checkpoint, also under
`<dir>/ckpt/`), a TF2 checkpoint prefix of the port, or an original TF1
checkpoint (upstream or the paper authors' fork), whose config is inferred
from its variables unless --config is given. `scae_tf/evaluation.py` says what
is measured: k-means on the prior and posterior capsule presences
(--kmeans=cosine, the fork's and the paper's; euclidean, upstream's; or both)
and the linear probes; `--seeds=1,2,3` also refits the k-means with those
seeds and reports the spread. Writes, beside the checkpoint unless
--out=PREFIX is given:
  <prefix>.kmeans_<prior|posterior>_<metric>.npz   the k-means classifiers
                                                   (`KMeansClassifier.load`)
  <prefix>.eval.json                               all accuracies + settings
and prints a table and the JSON. Errors (unknown dataset or config, missing
checkpoint or data) exit with status 1 and write nothing.
"""

from absl import app
from absl import flags

from scae_tf import cli
from scae_tf import configs
from scae_tf import evaluation

flags.DEFINE_string('checkpoint', None,
                    'Training log directory, TF2 checkpoint prefix or '
                    'original TF1 checkpoint.')
flags.DEFINE_string('dataset', 'mnist', 'mnist or fashion_mnist.')
flags.DEFINE_string('config', None,
                    'Named config (scae_tf.configs). Default: the config '
                    'saved beside a TF2 checkpoint, else the named config '
                    'whose variables fit the checkpoint.')
flags.DEFINE_string('preprocess', 'resize',
                    'resize (the paper\'s default), pad_center or pad_shift.')
flags.DEFINE_string('data_dir', None,
                    'Folder of the IDX files (default: scae_tf.data search).')
flags.DEFINE_string('kmeans', 'cosine', 'cosine, euclidean or both.')
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
flags.DEFINE_boolean('progress', True, 'Progress bars of the forward passes '
                     'and of the cosine k-means fits.')
flags.mark_flag_as_required('checkpoint')
FLAGS = flags.FLAGS


def _evaluate():
  # The checks first, before TensorFlow loads: a bad flag is refused in a
  # second. (`evaluation` imports TensorFlow only to evaluate.)
  evaluation.check_arguments(
      FLAGS.dataset, FLAGS.preprocess, FLAGS.kmeans, FLAGS.seeds,
      batch_size=FLAGS.batch_size, n_iter=FLAGS.n_iter, n_init=FLAGS.n_init,
      max_examples=FLAGS.max_examples, k=FLAGS.k)
  if FLAGS.config is not None:
    configs.get_config(FLAGS.config)
  report = evaluation.evaluate_checkpoint(
      FLAGS.checkpoint, FLAGS.dataset, config=FLAGS.config,
      preprocess=FLAGS.preprocess, data_dir=FLAGS.data_dir,
      kmeans=FLAGS.kmeans, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
      max_examples=FLAGS.max_examples, k=FLAGS.k, n_iter=FLAGS.n_iter,
      n_init=FLAGS.n_init, seeds=FLAGS.seeds, out=FLAGS.out,
      progress=FLAGS.progress, log=cli.log)
  print(evaluation.format_report(report))


def main(argv):
  return cli.run(argv, _evaluate)


if __name__ == '__main__':
  app.run(main)
