"""Evaluating a trained SCAE: unsupervised k-means and linear-probe accuracy.

  report = evaluate_checkpoint('runs/teacher_mnist_cpu', dataset='mnist',
                               kmeans='both', seeds=[1, 2, 3])
  print(format_report(report))

The model's prior and posterior capsule presences are computed for the train
and test splits; a k-means (k = number of classes) is fitted on the train
features and its clusters matched to labels on train (see `scae_tf.kmeans`):

  kmeans='cosine'     the fork's k-means, whose numbers the paper reports
                      (cosine distance, k-means++, 1000 full-data steps);
  kmeans='euclidean'  upstream's eval (scikit-learn KMeans, 1000 iterations);
  kmeans='both'.

Accuracies are reported on test, train+test (as the fork reports them) and
train, plus test with the clusters re-matched on test (upstream's protocol),
and the linear probes' accuracies. `seeds` refits the k-means with those seeds
too and reports the spread of the test accuracy, and the accuracy of the fit
with the smallest mean distance to its train features (the fit that keeping
the best of several k-means restarts would choose). Written beside the
checkpoint, or under the prefix `out`:

  <prefix>.kmeans_<prior|posterior>_<metric>.npz   the k-means classifiers
                                                   (`load_model` finds them),
                                                   with what they were fitted
                                                   on (`kmeans.fitted_on`)
  <prefix>.eval.json                               all accuracies + settings

Both name the checkpoint, the data and the classifiers by paths relative to
their own folder, so that a folder that moves (a shipped model) keeps them
true and no absolute path of the machine that wrote them travels with it.
"""

import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from scae_tf import cli
from scae_tf import files
from scae_tf import data
# `kmeans` and `loading` (TensorFlow) are imported where they serve, so that
# `check_arguments` answers first (run/evaluate.py).

DATASETS = ('mnist', 'fashion_mnist')
KMEANS = {'cosine': ('cosine',), 'euclidean': ('euclidean',),
          'both': ('cosine', 'euclidean')}


def check_arguments(dataset, preprocess, kmeans, seeds, **positive):
  """The checks of `evaluate_checkpoint`'s arguments, without TensorFlow;
  returns the seeds as integers."""
  cli.check_choice('dataset', dataset, DATASETS)
  cli.check_choice('preprocess', preprocess, data.MODES)
  cli.check_choice('kmeans', kmeans, tuple(KMEANS))
  for name, value in positive.items():
    cli.check_positive(name, value, optional=name in ('max_examples', 'k'))
  try:
    return [int(s) for s in seeds]
  except ValueError:
    raise cli.UsageError(f'seeds must be integers, got {seeds}.') from None


def split_features(model, split: str, data_dir: str,
                   preprocess: str = 'resize', seed: int = 0,
                   batch_size: int = 500, max_examples: Optional[int] = None,
                   progress: bool = False):
  """(features, labels) of the first `max_examples` (default: all) images of
  a split: a `kmeans.collect_features` dict without its labels, and them.

  `pad_shift` offsets are drawn from (seed, split), so the train and test
  placements differ and a rerun repeats them.
  """
  images, labels = data.load_split(data_dir, split)
  if max_examples is not None:
    images, labels = images[:max_examples], labels[:max_examples]
  rng = np.random.default_rng([seed, split == 'test'])
  batches = ((data.preprocess(images[i:i + batch_size], preprocess, rng=rng,
                              canvas_size=model.config.canvas_size),
              labels[i:i + batch_size])
             for i in range(0, len(images), batch_size))
  from scae_tf import kmeans as kmeans_lib  # pylint: disable=g-import-not-at-top
  feats = kmeans_lib.collect_features(model, batches, progress=progress,
                                      desc=f'{split} features',
                                      total=len(images))
  return feats, feats.pop('labels')


def evaluate_checkpoint(checkpoint: str, dataset: str = 'mnist', *,
                        config=None, preprocess: str = 'resize',
                        data_dir: Optional[str] = None, kmeans: str = 'cosine',
                        seed: int = 0, batch_size: int = 500,
                        max_examples: Optional[int] = None,
                        k: Optional[int] = None, n_iter: int = 1000,
                        n_init: int = 10, seeds: Sequence[int] = (),
                        out: Optional[str] = None, progress: bool = True,
                        log: Optional[Callable[[str], None]] = None) -> dict:
  """Evaluates a checkpoint and writes its classifiers and report.

  Args:
    checkpoint: anything `loading.load_model` accepts.
    dataset: one of DATASETS; also the hint when the config is inferred.
    config: a config name or ScaeConfig (default: `load_model`'s choice).
    preprocess: one of `data.MODES` (resize: the paper's default).
    data_dir: folder of the IDX files (default: `data.resolve_data_dir`).
    kmeans: one of KMEANS: the k-means variants to fit.
    seed: seed of the k-means (and of pad_shift).
    batch_size: batch size of the forward passes.
    max_examples: use at most this many (the first) examples of each split.
    k: number of clusters (default: number of classes).
    n_iter, n_init: k-means steps / iterations, scikit-learn restarts.
    seeds: more k-means seeds; their spread is under 'seed_spread'.
    out: output prefix (default: the checkpoint prefix).
    progress: progress bars on stderr.
    log: callable(str) for progress messages and warnings.

  Returns:
    The report written to `<out>.eval.json` (its paths relative to that
    file's folder), plus its path as 'eval_json'.
    Nothing is written when an argument, the checkpoint or the data is bad,
    and an output folder that cannot be written is an error before the
    work (NotWritableError).
  """
  log = log or (lambda msg: None)
  seeds = check_arguments(dataset, preprocess, kmeans, seeds,
                          batch_size=batch_size, n_iter=n_iter, n_init=n_init,
                          max_examples=max_examples, k=k)
  start = time.time()
  out = _writable_prefix(checkpoint, out)
  loaded, data_dir = _load(checkpoint, config, dataset, data_dir, log)
  config, prefix = loaded.config, loaded.prefix
  feats, labels, seconds = {}, {}, {}
  for split in ('train', 'test'):
    t = time.time()
    feats[split], labels[split] = split_features(
        loaded.model, split, data_dir, preprocess, seed, batch_size,
        max_examples, progress)
    seconds[f'features_{split}'] = round(time.time() - t, 2)
  fit = dict(k=k or config.num_classes, n_iter=n_iter,
             n_classes=config.num_classes, n_init=n_init)
  results, classifiers, spread = _fit_kmeans(
      feats, labels, KMEANS[kmeans], fit, seed, seeds, prefix, seconds,
      progress, log)

  # Paths relative to the folder of the files that record them.
  here = lambda path: os.path.relpath(os.path.abspath(path),
                                      os.path.dirname(os.path.abspath(out)))
  saved = _save_classifiers(classifiers, out, prefix, dataset, preprocess,
                            config.name, here)
  seconds['total'] = round(time.time() - start, 2)
  report = dict(
      checkpoint=here(prefix), checkpoint_format=loaded.format,
      config=config.name, config_source=loaded.config_source,
      dataset=dataset, data_dir=here(data_dir), preprocess=preprocess,
      seed=seed, batch_size=batch_size, max_examples=max_examples,
      kmeans=dict(variants=list(KMEANS[kmeans]), k=fit['k'], n_iter=n_iter,
                  n_init=n_init, cluster_to_label_fitted_on='train'),
      results=results, seed_spread=spread, classifiers=saved,
      seconds=seconds)
  json_path = f'{out}.eval.json'
  files.write_json(json_path, report)
  report['eval_json'] = json_path
  return report


def _load(checkpoint, config, dataset, data_dir, log):
  """The model (without k-means) and the data folder, said in the log."""
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  loaded = loading.load_model(checkpoint, config, dataset=dataset,
                              kmeans=False)
  data_dir = data.resolve_data_dir(dataset, data_dir)
  log(f'checkpoint: {loaded.prefix} ({loaded.format.upper()}); config '
      f'{loaded.config.name!r} ({loaded.config_source}); data: {data_dir}')
  if loaded.config.dataset != dataset:
    log(f'warning: config {loaded.config.name!r} was made for dataset '
        f'{loaded.config.dataset!r}, evaluating on {dataset!r}.')
  return loaded, data_dir


def _writable_prefix(checkpoint, out):
  """The outputs' prefix (default: the checkpoint's), checked writable now:
  the outputs come after minutes of work."""
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  beside = out is None
  out = out or loading.find_checkpoint(checkpoint)
  try:
    files.check_writable(os.path.dirname(os.path.abspath(out)))
  except files.NotWritableError as e:
    hint = ' (the checkpoint\'s folder; pass out= elsewhere)' if beside else ''
    raise files.NotWritableError(f'{e}{hint}') from None
  return out


def _fit_kmeans(feats, labels, metrics, fit, seed, seeds, prefix, seconds,
                progress, log):
  """The k-means of every variant (and their spread over `seeds`), timed
  into `seconds`: (results, classifiers, spread or None)."""
  from scae_tf import kmeans as kmeans_lib  # pylint: disable=g-import-not-at-top
  t = time.time()
  results, classifiers = kmeans_lib.evaluate_kmeans(
      feats['train'], labels['train'], feats['test'], labels['test'],
      metrics=metrics, seed=seed, checkpoint=prefix, log=log,
      progress=progress, **fit)
  seconds['kmeans'] = round(time.time() - t, 2)
  spread = None
  if seeds:
    t = time.time()
    spread = kmeans_lib.seed_spread(
        feats['train'], labels['train'], feats['test'], labels['test'],
        seeds=[seed] + seeds, metrics=metrics, log=log, progress=progress,
        **fit)
    seconds['seed_spread'] = round(time.time() - t, 2)
  return results, classifiers, spread


def _save_classifiers(classifiers, out, prefix, dataset, preprocess,
                      config_name, here):
  """Saves each classifier beside `out` with its provenance; returns
  {kind_metric: its path relative to the report}."""
  # pylint: disable=g-import-not-at-top
  from scae_tf import kmeans as kmeans_lib
  from scae_tf import loading
  # pylint: enable=g-import-not-at-top
  saved = {}
  for (kind, metric), clf in sorted(classifiers.items()):
    path = loading.kmeans_path(out, kind, metric)
    clf.metadata.update(kmeans_lib.fitted_on(prefix, dataset, preprocess,
                                             config_name, path=path))
    saved[f'{kind}_{metric}'] = here(clf.save(path))
  return saved


def format_report(report: dict) -> str:
  """The accuracy table, the seed spread in words, then the report's JSON."""
  from scae_tf import kmeans as kmeans_lib  # pylint: disable=g-import-not-at-top
  lines = [kmeans_lib.format_results(report['results'])]
  for metric, per_kind in (report['seed_spread'] or {}).items():
    for kind, r in per_kind.items():
      best = r['best_by_distance']
      lines.append(
          f'k-means {metric} / {kind} test accuracy over seeds '
          f'{list(r["per_seed"])}: min {r["min"]:.4f} mean {r["mean"]:.4f} '
          f'max {r["max"]:.4f}; the fit nearest its train features (seed '
          f'{best["seed"]}) gives {best["test"]:.4f}')
  lines += ['', json.dumps(report, indent=1)]
  return '\n'.join(lines)
