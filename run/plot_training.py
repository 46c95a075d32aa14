"""Plots training curves from one or more run directories' log.jsonl.

  python run/plot_training.py --runs=runs/teacher_mnist_cpu,runs/teacher_mnist_paper \
      --out=training.png

Panels: loss, probe accuracy on training batches (moving average) and on the
test split (per epoch, with the k-means test accuracy when the run used
--kmeans_every_epoch), each against steps; and test probe accuracy against
wall-clock hours.

With --table it also prints, per run, a Markdown table of the per-epoch test
evaluations (k-means and probes), as RESULTS.md shows them.
"""

import json
import os

from absl import app
from absl import flags

flags.DEFINE_list('runs', None, 'Run directories (each with a log.jsonl).')
flags.DEFINE_list('labels', None, 'Legend labels (default: directory names).')
flags.DEFINE_string('out', 'training.png', 'Output PNG.')
flags.DEFINE_integer('smooth', 20, 'Moving-average window (log records).')
flags.DEFINE_bool('table', False, 'Also print per-epoch Markdown tables.')
flags.mark_flag_as_required('runs')
FLAGS = flags.FLAGS


def read_log(run_dir):
  """(train, probe eval, k-means eval) records of a run's log.jsonl."""
  train, evals, kmeans = [], [], []
  with open(os.path.join(run_dir, 'log.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if record.get('kmeans'):
        kmeans.append(record)
      elif record.get('eval'):
        evals.append(record)
      else:
        train.append(record)
  return train, evals, kmeans


def epoch_table(evals, kmeans):
  """Markdown rows: epoch, step, wall h, k-means prior / posterior, probes.

  Joins the probe and k-means records of the same step; an epoch without a
  k-means record shows '-' there.
  """
  pct = lambda r, key: f'{100 * r[key]:.2f} %' if r and key in r else '-'
  by_step = {r['step']: r for r in kmeans}
  lines = ['| epoch | step | wall h | k-means prior | k-means posterior '
           '| probe prior | probe posterior |', '|---|---|---|---|---|---|---|']
  for r in evals:
    k = by_step.get(r['step'])
    wall = f'{r["wall_time"] / 3600:.2f}' if 'wall_time' in r else '-'
    lines.append(
        f'| {r["epoch"]:g} | {r["step"]} | {wall} '
        f'| {pct(k, "kmeans_prior_test_acc")} '
        f'| {pct(k, "kmeans_posterior_test_acc")} '
        f'| {pct(r, "prior_probe_acc")} | {pct(r, "posterior_probe_acc")} |')
  return '\n'.join(lines)


def moving_average(values, window):
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = np.asarray(values, float)
  if len(values) < window:
    return values
  kernel = np.ones(window) / window
  return np.convolve(values, kernel, mode='valid')


def main(argv):
  del argv
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  labels = FLAGS.labels or [os.path.basename(r.rstrip('/')) for r in FLAGS.runs]
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
  for run_dir, label in zip(FLAGS.runs, labels):
    train, evals, kmeans = read_log(run_dir)
    if FLAGS.table:
      print(f'{label}:\n{epoch_table(evals, kmeans)}\n')
    steps = [r['step'] for r in train]
    w = min(FLAGS.smooth, max(1, len(train)))
    axes[0].plot(steps, [r['loss'] for r in train], label=label, lw=.8)
    for key, style in (('prior_cls_acc', '-'), ('posterior_cls_acc', '--')):
      axes[1].plot(steps[w - 1:], moving_average([r[key] for r in train], w),
                   style, label=f'{label} {key.split("_")[0]}')
    for key, style in (('prior_probe_acc', 'o-'),
                       ('posterior_probe_acc', 's--')):
      axes[2].plot([r['step'] for r in evals], [r[key] for r in evals],
                   style, label=f'{label} {key.split("_")[0]}')
      axes[3].plot([r['wall_time'] / 3600 for r in evals],
                   [r[key] for r in evals], style,
                   label=f'{label} {key.split("_")[0]}')
    for key, style in (('kmeans_prior_test_acc', 'v:'),
                       ('kmeans_posterior_test_acc', '^:')):
      axes[2].plot([r['step'] for r in kmeans], [r[key] for r in kmeans],
                   style, label=f'{label} k-means {key.split("_")[1]}')
      timed = [r for r in kmeans if 'wall_time' in r]  # older logs lack it
      axes[3].plot([r['wall_time'] / 3600 for r in timed],
                   [r[key] for r in timed], style,
                   label=f'{label} k-means {key.split("_")[1]}')
  axes[0].set(title='training loss', xlabel='step', ylim=(None, None))
  axes[1].set(title=f'probe accuracy, training batches (avg of {FLAGS.smooth} '
              'logs)', xlabel='step', ylim=(0, 1))
  axes[2].set(title='test accuracy: probes and k-means', xlabel='step',
              ylim=(0, 1))
  axes[3].set(title='test accuracy: probes and k-means',
              xlabel='wall-clock hours', ylim=(0, 1))
  for ax in axes:
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(FLAGS.out, dpi=110)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
