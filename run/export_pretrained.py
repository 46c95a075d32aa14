"""Ships a trained SCAE in the repository: weights only, its config, its
cosine k-means (fitted on the exported weights) and a model card.

  python run/export_pretrained.py --source=runs/teacher_mnist_cpu \
      --out=pretrained/teacher_mnist_cpu \
      --command="python run/train_teacher.py --recipe=cpu ..."

Then `python run/attack.py --checkpoint=pretrained/teacher_mnist_cpu` works
on a fresh clone. See scae_tf/pretrained.py for the folder's files. The
folder is written under a temporary name beside --out and renamed at the
end: an interrupted export leaves no half-written folder. --eval_examples=N
fits and evaluates the card's k-means on the first N examples of each split
(default: all), and the card says so.
"""

from absl import app
from absl import flags

from scae_tf import cli
from scae_tf import evaluation

flags.DEFINE_string('source', None, 'A run folder or a checkpoint.')
flags.DEFINE_string('out', None, 'The folder to write, e.g. '
                    'pretrained/<name>.')
flags.DEFINE_string('dataset', 'mnist', 'mnist or fashion_mnist.')
flags.DEFINE_string('command', None, 'The command that trained the source, '
                    'for the model card.')
flags.DEFINE_string('data_dir', None, 'Folder with the IDX files.')
flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out.')
flags.DEFINE_integer('eval_examples', None, 'Fit and evaluate the card\'s '
                     'k-means on the first N examples of each split only '
                     '(default: all; the card says so).')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['source', 'out'])
FLAGS = flags.FLAGS


def _export():
  cli.check_positive('eval_examples', FLAGS.eval_examples, optional=True)
  # Refused before TensorFlow loads (`evaluation` imports it to evaluate).
  cli.check_choice('dataset', FLAGS.dataset, evaluation.DATASETS)
  # Imported here so that --help and a bad flag answer without loading
  # TensorFlow.
  from scae_tf import pretrained  # pylint: disable=g-import-not-at-top
  print(pretrained.export(
      FLAGS.source, FLAGS.out, FLAGS.dataset, command=FLAGS.command,
      data_dir=FLAGS.data_dir, max_examples=FLAGS.eval_examples,
      overwrite=FLAGS.overwrite, progress=FLAGS.progress, log=cli.log))


def main(argv):
  return cli.run(argv, _export)


if __name__ == '__main__':
  app.run(main)
