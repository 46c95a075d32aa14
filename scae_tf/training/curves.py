"""Training curves and per-epoch tables from runs' `log.jsonl` files.

Panels: loss, probe accuracy on training batches (moving average) and on the
test split (per epoch, with the k-means test accuracy when the run used
--kmeans_every_epoch), each against steps; and test accuracy against
wall-clock hours. `epoch_table` gives the per-epoch evaluations as the
Markdown tables of RESULTS.md, `generator_table` a defence's adversarial
batches by blocks of steps.
"""

import json
import os

import numpy as np


def read_log(run_dir):
  """(train, probe eval, k-means eval) records of a run's log.jsonl;
  FileNotFoundError in words for a missing folder or one without a log."""
  path = os.path.join(run_dir, 'log.jsonl')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{run_dir} is not a run folder (no log.jsonl)'
        if os.path.isdir(run_dir) else f'no run folder {run_dir}')
  train, evals, kmeans = [], [], []
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if record.get('kmeans'):
        kmeans.append(record)
      elif record.get('eval'):
        evals.append(record)
      else:
        train.append(record)
  return train, evals, kmeans


def run_deviations(run_dir):
  """How the run in `run_dir` departs from the paper (its `run.json`: the
  recipe's deviation and a defence's 'deviations'); [] when it does not, or
  when the folder has no run.json."""
  path = os.path.join(run_dir, 'run.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    settings = json.load(f)
  found = list(settings.get('deviations') or ())
  recipe = (settings.get('recipe') or {}).get('deviation')
  if recipe and recipe not in found:
    found.insert(0, recipe)
  return found


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


def generator_table(train, block=50):
  """Markdown rows: the defences' generator on its adversarial batches
  (records with `adversarial`), per block of `block` steps: the batches,
  their success rate and the mean L2 over all their successes (each
  batch's mean weighted by its successes; batches are all one size)."""
  blocks = {}
  for r in train:
    if r.get('adversarial') and 'attack_success_rate' in r:
      blocks.setdefault((r['step'] - 1) // block, []).append(r)
  lines = ['| steps | adversarial batches | success rate | mean L2 of the '
           'successes |', '|---|---|---|---|']
  for b in sorted(blocks):
    rate = np.array([r['attack_success_rate'] for r in blocks[b]])
    l2 = np.array([r.get('attack_mean_l2', np.nan) for r in blocks[b]])
    steps = [r['step'] for r in blocks[b]]
    mean_l2 = (f'{np.sum(rate * l2) / rate.sum():.2f}' if rate.sum() > 0
               else '-')
    lines.append(f'| {b * block + 1}-{max(steps)} | {len(steps)} '
                 f'| {100 * rate.mean():.1f} % | {mean_l2} |')
  return '\n'.join(lines)


def moving_average(values, window):
  values = np.asarray(values, float)
  if len(values) < window:
    return values
  kernel = np.ones(window) / window
  return np.convolve(values, kernel, mode='valid')


def png_path(out):
  """The file `plot_runs` writes for `out`: `out`, or `<out>.png` when it
  has no extension (as matplotlib would)."""
  return out if os.path.splitext(out)[1][1:] else out.rstrip('.') + '.png'


def _dots(points):
  """Markers for a curve of one point, which a line alone does not draw
  (a run of a few steps)."""
  return dict(marker='.') if points < 2 else {}


def plot_runs(runs, out, labels=None, smooth=20, title=None):
  """Draws the curves of the `runs` folders into the PNG `out`
  (`png_path`); returns the path written."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  labels = labels or [os.path.basename(r.rstrip('/')) for r in runs]
  caption = [f'{label}: DEVIATION from the paper: {text}'
             for run_dir, label in zip(runs, labels)
             for text in run_deviations(run_dir)]
  fig, axes = plt.subplots(1, 4, figsize=(20, 5.5))
  for run_dir, label in zip(runs, labels):
    train, evals, kmeans = read_log(run_dir)
    steps = [r['step'] for r in train]
    w = min(smooth, max(1, len(train)))
    axes[0].plot(steps, [r['loss'] for r in train], label=label, lw=.8,
                 **_dots(len(steps)))
    for key, style in (('prior_cls_acc', '-'), ('posterior_cls_acc', '--')):
      axes[1].plot(steps[w - 1:], moving_average([r[key] for r in train], w),
                   style, label=f'{label} {key.split("_")[0]}',
                   **_dots(len(steps) - w + 1))
    for key, style in (('prior_probe_acc', 'o-'),
                       ('posterior_probe_acc', 's--')):
      axes[2].plot([r['step'] for r in evals], [r[key] for r in evals],
                   style, label=f'{label} probe {key.split("_")[0]}')
      axes[3].plot([r['wall_time'] / 3600 for r in evals],
                   [r[key] for r in evals], style,
                   label=f'{label} probe {key.split("_")[0]}')
    # A final k-means fitted on fewer examples says so (--kmeans_examples).
    fewer = kmeans and kmeans[-1].get('kmeans_examples')
    for key, style in (('kmeans_prior_test_acc', 'v:'),
                       ('kmeans_posterior_test_acc', '^:')):
      name = f'{label} k-means {key.split("_")[1]}' + (
          f' ({fewer} examples)' if fewer else '')
      axes[2].plot([r['step'] for r in kmeans], [r[key] for r in kmeans],
                   style, label=name)
      timed = [r for r in kmeans if 'wall_time' in r]  # older logs lack it
      axes[3].plot([r['wall_time'] / 3600 for r in timed],
                   [r[key] for r in timed], style, label=name)
  axes[0].set(title='training loss', xlabel='step', ylabel='loss')
  axes[1].set(title=f'probe accuracy, training batches (avg of {smooth} '
              'logs)', xlabel='step', ylabel='accuracy', ylim=(0, 1))
  axes[2].set(title='test accuracy: probes and k-means', xlabel='step',
              ylabel='accuracy', ylim=(0, 1))
  axes[3].set(title='test accuracy: probes and k-means',
              xlabel='wall-clock hours', ylabel='accuracy', ylim=(0, 1))
  for ax in axes:
    ax.grid(alpha=.3)
    # Below the panel, so that no legend covers a curve.
    ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(.5, -.15),
              ncol=2, frameon=False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  if caption:
    fig.text(0.01, -0.02, '\n'.join(caption), fontsize=8, va='top',
             ha='left', color='darkred', wrap=True)
  out = png_path(out)
  fig.savefig(out, dpi=110, bbox_inches='tight')
  return out
