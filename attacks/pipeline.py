"""A robustness evaluation from start to finish: the attack of a checkpoint
under the defence code's protocol, and the redrawing of its reports.

  summary = attack_checkpoint('runs/teacher_mnist_cpu', 'PosK',
                              out_dir='results/mnist_posk')
  redraw_reports('results/mnist_posk')
  compare_runs(['results/a', 'results/b'], 'results/cmp', ['SCAE', 'HAT'])

`attack_checkpoint` attacks `num_samples` random samples (seeded by `seed`)
of a split (default: the paper's, MNIST test / Fashion-MNIST train) with an
attack preset (`attacks.evasion.PRESETS`, single settings overridden), and
writes to `out_dir` the files of `attacks.protocol`: l2.npz (0 for clean
errors, inf for failed attacks), adversarial.npz, summary.json, summary.md,
robust_accuracy.json (accuracy at every threshold 0..plot_max) and
accuracy_vs_l2.png (paper Figures 2-5). Finished batches are kept under
`<out_dir>/batches/`, and a rerun with the same settings skips them; a run
with other settings is refused unless `overwrite`.

PriK / PosK use a k-means classifier: by default the one `run/evaluate.py`
saved beside the checkpoint on cosine distance. One fitted on another
checkpoint, dataset or preprocessing than the attack's is refused, unless
`allow_kmeans_mismatch`.
"""

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence, Tuple

from attacks import protocol
from scae_tf import cli
from scae_tf import files

DATASETS = tuple(protocol.PAPER_THRESHOLDS)


def thresholds(dataset: str, threshold: Optional[float] = None,
               plot_max: Optional[float] = None) -> Tuple[float, float]:
  """(threshold of the summary, largest threshold of the curve): the paper's
  (4 MNIST, 5 Fashion-MNIST) and one more, unless given."""
  if threshold is None:
    cli.check_choice('dataset', dataset, DATASETS)
  t = protocol.PAPER_THRESHOLDS[dataset] if threshold is None else threshold
  return t, t + 1. if plot_max is None else plot_max


def default_out_dir(dataset: str, classifier: str, preset: str) -> str:
  return os.path.join('results', f'attack_{dataset}_{classifier}_{preset}')


def attack_checkpoint(checkpoint: str, classifier: str = 'PosK', *,
                      config=None, kmeans: Optional[str] = None,
                      allow_kmeans_mismatch: bool = False,
                      dataset: str = 'mnist', split: Optional[str] = None,
                      data_dir: Optional[str] = None,
                      preprocess: str = 'resize', num_samples: int = 5000,
                      batch_size: int = 100, seed: int = 0,
                      preset: str = 'paper_eval',
                      overrides: Optional[dict] = None,
                      out_dir: Optional[str] = None, overwrite: bool = False,
                      threshold: Optional[float] = None,
                      plot_max: Optional[float] = None,
                      progress: bool = True,
                      log: Optional[Callable[[str], None]] = None) -> dict:
  """Attacks a checkpoint's classifier and writes the protocol's outputs.

  Args:
    checkpoint: anything `scae_tf.loading.load_model` accepts.
    classifier: PriK, PosK, PriL or PosL (`attacks.classifiers`).
    config: a config name or ScaeConfig (default: `load_model`'s choice).
    kmeans: a KMeansClassifier file (.npz / .json) for PriK / PosK (default:
      the cosine one beside the checkpoint).
    allow_kmeans_mismatch: use a k-means classifier fitted on another
      checkpoint, dataset or preprocessing (`kmeans.check_fitted_on`) after
      a warning, instead of refusing it.
    dataset, split, data_dir, preprocess: the attacked images (split default:
      `protocol.DEFAULT_SPLITS`).
    num_samples, batch_size, seed: random samples, attacked this many at a
      time; the seed draws them and seeds the attack.
    preset, overrides: `attacks.evasion.get_config(preset, **overrides)`.
    out_dir: default `default_out_dir(dataset, classifier, preset)`.
    overwrite: restart: remove every output of the run in `out_dir` first
      (`protocol.remove_outputs`).
    threshold, plot_max: see `thresholds`.
    progress: a progress bar on stderr.
    log: callable(str) for progress messages.

  Returns:
    dict(summary=the protocol summary, settings=the run's settings,
    out_dir=the output folder).
  """
  # Imported here: the reports alone need neither TensorFlow nor a model.
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from attacks import classifiers, evasion
  from scae_tf import data, loading
  from scae_tf import kmeans as kmeans_lib
  from scae_tf.kmeans import KMeansClassifier
  from scae_tf.training import run_dir
  # pylint: enable=g-import-not-at-top
  log = log or (lambda msg: None)
  cli.check_choice('dataset', dataset, DATASETS)
  cli.check_choice('preprocess', preprocess, data.MODES)
  cli.check_choice('split', split, (None,) + tuple(data.SPLITS))
  cli.check_positive('num_samples', num_samples)
  cli.check_positive('batch_size', batch_size)
  name = classifiers.classifier_name(classifier)
  attack_config = evasion.get_config(preset, seed=seed, **(overrides or {}))
  split = split or protocol.DEFAULT_SPLITS[dataset]
  threshold, t_max = thresholds(dataset, threshold, plot_max)
  out_dir = out_dir or default_out_dir(dataset, name, preset)

  # Attacks run without noise: with it, every forward pass would draw anew.
  loaded = loading.load_model(checkpoint, config, dataset=dataset)
  config, prefix = loaded.config, loaded.prefix
  kmeans_clf = None
  if name.endswith('K'):
    kind = classifiers.feature_kind_of(name)
    if kmeans is None:
      kmeans = loading.kmeans_path(prefix, kind)
      kmeans_clf = loaded.kmeans.get(f'{kind}_cosine')
    elif os.path.exists(kmeans):
      kmeans_clf = KMeansClassifier.load(kmeans)
    if kmeans_clf is None:
      raise FileNotFoundError(
          f'k-means classifier {kmeans!r} not found; run run/evaluate.py on '
          'the checkpoint or pass --kmeans.')
    kmeans_lib.check_fitted_on(kmeans_clf, kmeans, prefix, dataset,
                               preprocess, allow_kmeans_mismatch, log)
  attack = evasion.CapsuleAttack(
      classifiers.make_classifier(loaded.model, name, kmeans_clf),
      attack_config)

  images_u8, labels = data.load_dataset(dataset, split, data_dir)
  if num_samples > len(images_u8):
    raise cli.UsageError(f'num_samples={num_samples} exceeds the '
                         f'{len(images_u8)} examples of the {split} split.')
  indices = np.random.default_rng(seed).choice(len(images_u8), num_samples,
                                               replace=False)
  images = data.preprocess(images_u8[indices], preprocess,
                           rng=np.random.default_rng([seed, 1]),
                           canvas_size=config.canvas_size)

  # Compared with the saved ones when a run resumes: keep their values.
  settings = dict(
      checkpoint=os.path.abspath(prefix), checkpoint_format=loaded.format,
      config=config.name, classifier=name,
      kmeans=os.path.abspath(kmeans) if kmeans_clf else None,
      dataset=dataset, split=split, preprocess=preprocess,
      num_samples=num_samples, batch_size=batch_size, seed=seed,
      preset=preset, attack=dataclasses.asdict(attack_config))
  lock = run_dir.lock_folder(out_dir)  # held until the attack returns
  protocol.check_settings(out_dir, settings, overwrite)
  log(f'checkpoint {prefix} ({loaded.format.upper()}, config {config.name}); '
      f'{name}; {num_samples} samples of {dataset}/{split}; preset {preset}; '
      f'out {out_dir}')
  start = time.time()
  results = protocol.run_protocol(
      attack, images, labels[indices], out_dir, batch_size, seed,
      indices=indices, threshold=threshold, progress=progress)
  summary = protocol.write_outputs(out_dir, results, settings, threshold,
                                   t_max)
  log(f'done in {time.time() - start:.0f} s; results in {out_dir}')
  return dict(summary=summary, settings=settings, out_dir=out_dir)


def redraw_reports(out_dir: str, dataset: str = 'mnist',
                   threshold: Optional[float] = None,
                   plot_max: Optional[float] = None) -> dict:
  """Rewrites the reports of a finished run from its saved results; returns
  the summary. `dataset` only serves when the run's settings lack it."""
  arrays, settings = protocol.load_results(out_dir)
  t, t_max = thresholds(settings.get('dataset', dataset), threshold, plot_max)
  return protocol.write_reports(out_dir, arrays['perturbation'],
                                arrays['clean_correct'], settings, t, t_max)


def compare_runs(folders: Sequence[str], out_dir: str,
                 labels: Optional[Sequence[str]] = None,
                 dataset: str = 'mnist', threshold: Optional[float] = None,
                 plot_max: Optional[float] = None,
                 log: Optional[Callable[[str], None]] = None) -> str:
  """Overlays the accuracy curves of finished runs in
  `<out_dir>/accuracy_vs_l2.png` and tabulates them in `<out_dir>/compare.md`
  (curves labelled by `labels`, default the folder names); returns the table.
  The thresholds are those of the first run's dataset."""
  if labels and len(labels) != len(folders):
    raise cli.UsageError('labels needs one label per compared folder.')
  curves, runs = [], []
  for i, folder in enumerate(folders):
    arrays, settings = protocol.load_results(folder)
    label = (labels[i] if labels else
             os.path.basename(os.path.normpath(folder)))
    curves.append((label, arrays['perturbation']))
    runs.append(settings)
  t, t_max = thresholds(runs[0].get('dataset', dataset), threshold, plot_max)
  os.makedirs(out_dir, exist_ok=True)
  plot = protocol.plot_accuracy_vs_l2(
      curves, os.path.join(out_dir, 'accuracy_vs_l2.png'), t_max, t,
      protocol.plot_title(runs))
  rows = ['| run | clean accuracy | accuracy at L2 <= %g |' % t,
          '| --- | --- | --- |']
  for label, p in curves:
    rows.append(f'| {label} | {protocol.accuracy_at(p, 0.):.4f} | '
                f'{protocol.accuracy_at(p, t):.4f} |')
  table = '\n'.join(rows)
  files.write_text(os.path.join(out_dir, 'compare.md'), table + '\n')
  if log is not None:
    log(f'wrote {plot}')
  return table
