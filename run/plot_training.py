"""Plots training curves from one or more run directories' log.jsonl.

  python run/plot_training.py --runs=runs/teacher_mnist_cpu,runs/teacher_mnist_paper \\
      --out=training.png

See `scae_tf/training/curves.py` for the panels. With --table it also prints,
per run, a Markdown table of the per-epoch test evaluations (k-means and
probes), as RESULTS.md shows them; with --generator_blocks=50 a defence
run's adversarial batches by blocks of 50 steps. An --out without an
extension is written as <out>.png. A missing run, a folder that is no run
or an --out in a missing folder: one error line and exit status 1.
"""

import os

from absl import app
from absl import flags

from scae_tf import cli

flags.DEFINE_list('runs', None, 'Run directories (each with a log.jsonl).')
flags.DEFINE_list('labels', None, 'Legend labels (default: directory names).')
flags.DEFINE_string('out', 'training.png', 'Output PNG.')
flags.DEFINE_integer('smooth', 20, 'Moving-average window (log records).',
                     lower_bound=1)
flags.DEFINE_string('title', None, 'Figure title (e.g. data set and recipe).')
flags.DEFINE_bool('table', False, 'Also print per-epoch Markdown tables.')
flags.DEFINE_integer('generator_blocks', None, 'Also print, per run, the '
                     'generator\'s success rate and mean L2 on a defence\'s '
                     'adversarial batches, by blocks of this many steps.',
                     lower_bound=1)
flags.mark_flag_as_required('runs')
FLAGS = flags.FLAGS


def _plot():
  # Imported here: after `cli.run` has quietened TensorFlow's start-up.
  from scae_tf.training import curves  # pylint: disable=g-import-not-at-top
  out = curves.png_path(FLAGS.out)
  folder = os.path.dirname(out)
  if folder and not os.path.isdir(folder):
    raise FileNotFoundError(f'no folder {folder} for --out')
  runs = [curves.read_log(run_dir) for run_dir in FLAGS.runs]
  labels = FLAGS.labels or [os.path.basename(r.rstrip('/'))
                            for r in FLAGS.runs]
  for (train, evals, kmeans), label in zip(runs, labels):
    if FLAGS.table:
      print(f'{label}:\n{curves.epoch_table(evals, kmeans)}\n')
    if FLAGS.generator_blocks:
      print(f'{label}, adversarial batches:\n'
            f'{curves.generator_table(train, FLAGS.generator_blocks)}\n')
  out = curves.plot_runs(FLAGS.runs, out, labels=FLAGS.labels,
                         smooth=FLAGS.smooth, title=FLAGS.title)
  print(f'wrote {out}')


def main(argv):
  return cli.run(argv, _plot)


if __name__ == '__main__':
  app.run(main)
