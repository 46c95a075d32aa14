"""The k-means report: accuracies of both feature kinds and variants
(`evaluate_kmeans`), how much the seed moves them (`seed_spread`), and a
readable table (`format_results`)."""

from typing import Dict, Optional, Sequence

import numpy as np

from scae_tf.kmeans.classifier import fit_kmeans_classifier
from scae_tf.kmeans.features import FEATURE_KINDS
from scae_tf.kmeans.matching import rematched_accuracy



def evaluate_kmeans(train_features: Dict[str, np.ndarray], train_labels,
                    test_features: Dict[str, np.ndarray], test_labels,
                    metrics: Sequence[str] = ('cosine',),
                    kinds: Sequence[str] = FEATURE_KINDS, k: int = 10,
                    n_iter: int = 1000, seed: int = 0,
                    n_classes: Optional[int] = None, n_init: int = 10,
                    n_retries: int = 10, checkpoint: Optional[str] = None,
                    log=None, progress: bool = False):
  """Fits k-means on the train features, scores train, test and train+test.

  Args:
    train_features, test_features: `collect_features` dicts.
    train_labels, test_labels: [N] int labels.
    metrics: k-means variants to run ('cosine', 'euclidean').
    kinds: feature kinds ('prior', 'posterior').
    log: optional callable(str) for progress messages.
    progress: progress bars of the cosine fits on stderr.

  Returns:
    (results, classifiers): results is a JSON-able dict
      {n_train, n_test, linear_probe: {kind: {train, test}},
       kmeans: {metric: {kind: {train, test, train+test, test_rematched,
                                train+test_rematched}}}}
    with the cluster -> label map fitted on train for train / test /
    train+test, re-fitted on the evaluated set for *_rematched (upstream's
    protocol); classifiers maps (kind, metric) -> KMeansClassifier.
  """
  train_labels = np.asarray(train_labels, np.int64).reshape(-1)
  test_labels = np.asarray(test_labels, np.int64).reshape(-1)
  if n_classes is None:
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
  all_labels = np.concatenate([train_labels, test_labels])
  results = dict(n_train=int(len(train_labels)), n_test=int(len(test_labels)),
                 linear_probe={}, kmeans={})
  for kind in kinds:
    probe = {}
    for split, feats, labels in (('train', train_features, train_labels),
                                 ('test', test_features, test_labels)):
      key = f'{kind}_probe_pred'
      if key in feats:
        probe[split] = float(np.mean(np.asarray(feats[key]) == labels))
    if probe:
      results['linear_probe'][kind] = probe
  classifiers = {}
  for metric in metrics:
    results['kmeans'][metric] = {}
    for kind in kinds:
      if log is not None:
        log(f'k-means ({metric}) on {kind} features...')
      clf = fit_kmeans_classifier(
          train_features[kind], train_labels, metric=metric, feature=kind,
          k=k, n_iter=n_iter, seed=seed, n_classes=n_classes, n_init=n_init,
          n_retries=n_retries, checkpoint=checkpoint, progress=progress)
      test_x = np.asarray(test_features[kind])
      all_x = np.concatenate([np.asarray(train_features[kind]), test_x])
      all_clusters = clf.assign(all_x)
      n_train = len(train_labels)
      res = dict(
          train=clf.metadata['train_accuracy'],
          test=clf.accuracy(test_x, test_labels),
          **{'train+test': clf.accuracy(all_x, all_labels)},
          test_rematched=rematched_accuracy(all_clusters[n_train:],
                                            test_labels, k, n_classes),
          **{'train+test_rematched': rematched_accuracy(
              all_clusters, all_labels, k, n_classes)})
      clf.metadata['test_accuracy'] = res['test']
      clf.metadata['train+test_accuracy'] = res['train+test']
      results['kmeans'][metric][kind] = res
      classifiers[(kind, metric)] = clf
  return results, classifiers


def seed_spread(train_features: Dict[str, np.ndarray], train_labels,
                test_features: Dict[str, np.ndarray], test_labels,
                seeds: Sequence[int], metrics: Sequence[str] = ('cosine',),
                kinds: Sequence[str] = FEATURE_KINDS, log=None,
                **fit_kwargs):
  """Test accuracy of k-means refitted with each seed (map fitted on train).

  One k-means++ fit can merge two classes (the fork fits once, so a single
  number may be unlucky); this shows how far the seed moves the result.
  Each fit's mean distance on the train features (`mean_distance`) is kept
  too: the fit with the smallest one is what restarting k-means and keeping
  the best objective would give, without looking at labels.

  Returns {metric: {kind: {'per_seed': {seed: acc}, 'min', 'mean', 'max',
  'train_distance': {seed: mean distance}, 'best_by_distance': {'seed',
  'test'}}}}.
  """
  test_labels = np.asarray(test_labels, np.int64).reshape(-1)
  spread = {}
  for metric in metrics:
    spread[metric] = {}
    for kind in kinds:
      per_seed, distance = {}, {}
      for seed in seeds:
        if log is not None:
          log(f'k-means ({metric}) on {kind} features, seed {seed}...')
        clf = fit_kmeans_classifier(train_features[kind], train_labels,
                                    metric=metric, feature=kind, seed=seed,
                                    **fit_kwargs)
        per_seed[int(seed)] = clf.accuracy(test_features[kind], test_labels)
        distance[int(seed)] = clf.mean_distance(train_features[kind])
      accs = list(per_seed.values())
      best = min(distance, key=distance.get)  # first seed among ties
      spread[metric][kind] = dict(
          per_seed=per_seed, min=min(accs), mean=float(np.mean(accs)),
          max=max(accs), train_distance=distance,
          best_by_distance=dict(seed=best, test=per_seed[best]))
  return spread


def format_results(results) -> str:
  """A readable table of `evaluate_kmeans` results."""
  lines = [f"examples: train={results['n_train']} test={results['n_test']}",
           '',
           f"{'classifier':<30}{'train':>9}{'test':>9}{'train+test':>12}"
           f"{'test*':>9}"]
  lines.append('-' * len(lines[-1]))
  for metric, per_kind in results['kmeans'].items():
    for kind, r in per_kind.items():
      lines.append(f"{f'k-means {metric} / {kind}':<30}{r['train']:>9.4f}"
                   f"{r['test']:>9.4f}{r['train+test']:>12.4f}"
                   f"{r['test_rematched']:>9.4f}")
  for kind, r in results['linear_probe'].items():
    train = f"{r['train']:>9.4f}" if 'train' in r else f"{'-':>9}"
    test = f"{r['test']:>9.4f}" if 'test' in r else f"{'-':>9}"
    lines.append(f"{f'linear probe / {kind}':<30}{train}{test}{'-':>12}"
                 f"{'-':>9}")
  lines.append('')
  lines.append('k-means: cluster -> label map fitted on train; test* '
               're-matches clusters to labels on the test set itself '
               "(upstream's eval protocol).")
  return '\n'.join(lines)
