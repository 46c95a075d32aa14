"""The robustness-evaluation protocol of the defence code (`utilities.attack`)
and its outputs: per-sample perturbations, summary, accuracy-vs-L2 curve.

Protocol: every sample gets a perturbation amount
  0            if the target misclassifies the clean sample (already broken),
  inf          if the attack failed,
  ||x_adv-x||  otherwise.
The accuracy at L2 threshold t is the fraction of samples whose amount is
GREATER than t (the attacker may not spend more than t); at t = 0 it is the
clean accuracy. Paper Figures 2-5 plot it against t; Table 6 reads it at
t = 4 (MNIST) and t = 5 (Fashion-MNIST), on 5000 random samples of the MNIST
test split / the Fashion-MNIST TRAIN split.

`run_protocol` attacks batch by batch and saves each finished batch under
`<out_dir>/batches/`, so an interrupted run resumes where it stopped;
`write_outputs` then writes `l2.npz`, `adversarial.npz`, `summary.json`,
`summary.md`, `robust_accuracy.json` and `accuracy_vs_l2.png`.
"""

import json
import os
import re
import sys
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from attacks import settings as settings_lib
from scae_tf import files
from scae_tf import interrupts
from scae_tf import run_folder

PAPER_THRESHOLDS = {'mnist': 4., 'fashion_mnist': 5.}
DEFAULT_SPLITS = {'mnist': 'test', 'fashion_mnist': 'train'}
BATCH_KEYS = ('indices', 'labels', 'clean_pred', 'success', 'attack_l2',
              'adversarial')
# Kept where an attack's result has them: its success before the 8-bit
# rounding (`attacks.quantize`).
OPTIONAL_BATCH_KEYS = ('success_unquantized',)
# What `write_outputs` writes beside settings.json and batches/.
OUTPUT_FILES = ('l2.npz', 'adversarial.npz', 'summary.json', 'summary.md',
                'robust_accuracy.json', 'accuracy_vs_l2.png')
#: The identity file of an attack's folder.
SETTINGS_FILE = 'settings.json'
BATCHES_DIR = 'batches'
BATCH_FILE = r'batch_\d{5}\.npz'
#: What `run_protocol` and `write_outputs` write in an attack's folder.
#: `l2.npz` goes first on --overwrite: without it no report is redrawn from
#: the rest.
LAYOUT = run_folder.Layout(identity=SETTINGS_FILE, files=OUTPUT_FILES,
                           collections=((BATCHES_DIR, BATCH_FILE),))
# A run's settings that follow from the others: the preset's settings that
# its run overrode (`attacks.settings.changed_settings`), which the labels
# name. Not compared when a run resumes: runs saved before they were
# recorded resume, and get them.
DERIVED_SETTINGS = ('modified',)


# --- numbers ----------------------------------------------------------------

def protocol_l2(clean_correct, success, attack_l2) -> np.ndarray:
  """[N] float64 perturbation amounts: 0 where the clean sample is already
  misclassified, inf where the attack failed, else the attack's L2."""
  clean_correct = np.asarray(clean_correct, bool)
  success = np.asarray(success, bool)
  amount = np.where(success, np.asarray(attack_l2, np.float64), np.inf)
  return np.where(clean_correct, amount, 0.)


def accuracy_at(perturbations, threshold: float) -> float:
  """Fraction of samples whose perturbation amount is > threshold."""
  p = np.asarray(perturbations, np.float64)
  return float(np.mean(p > threshold)) if p.size else float('nan')


def robust_accuracy_curve(perturbations, max_threshold: float,
                          step: float = 0.01) -> Dict[str, list]:
  """Accuracy at every threshold 0, step, ..., max_threshold."""
  n = int(round(max_threshold / step))
  thresholds = np.round(np.arange(n + 1) * step, 10)
  p = np.sort(np.asarray(perturbations, np.float64))
  # Number of amounts <= t, for every t at once.
  at_most = np.searchsorted(p, thresholds, side='right')
  accuracy = 1. - at_most / max(len(p), 1)
  return dict(thresholds=thresholds.tolist(), accuracy=accuracy.tolist())


def _mean_std(values):
  values = np.asarray(values, np.float64)
  if not values.size:
    return None, None
  return float(values.mean()), float(values.std())


def summarize(perturbations, clean_correct, threshold: float) -> dict:
  """The numbers of `summary.json`.

  attack_success_rate: successful attacks / correctly classified samples
    (the fork's `attack_opt.py`, which attacks correct samples only).
  success_rate_incl_clean_errors: (clean errors + successes) / all samples
    (the defence code's "Success rate").
  mean_l2 / std_l2: over successful attacks (the fork's numbers);
  *_incl_clean_errors: including the zeros of clean errors (defence code).
  """
  p = np.asarray(perturbations, np.float64)
  correct = np.asarray(clean_correct, bool)
  attacked = p[correct]
  succeeded = attacked[np.isfinite(attacked)]
  broken = p[np.isfinite(p)]
  mean_l2, std_l2 = _mean_std(succeeded)
  mean_all, std_all = _mean_std(broken)
  n_correct = int(correct.sum())
  return dict(
      num_samples=int(p.size),
      num_clean_correct=n_correct,
      num_successful_attacks=int(succeeded.size),
      clean_accuracy=float(correct.mean()) if p.size else None,
      attack_success_rate=(succeeded.size / n_correct) if n_correct else None,
      success_rate_incl_clean_errors=(broken.size / p.size) if p.size
      else None,
      mean_l2=mean_l2, std_l2=std_l2,
      mean_l2_incl_clean_errors=mean_all, std_l2_incl_clean_errors=std_all,
      threshold=float(threshold),
      accuracy_at_threshold=accuracy_at(p, threshold),
      # No budget limit: only the failed attacks (amount inf) still count.
      robust_accuracy_unbounded=float(np.mean(np.isinf(p))) if p.size
      else None)


def markdown_table(summary: dict, settings: Optional[dict] = None) -> str:
  """A two-column markdown table of the summary (and settings)."""

  def fmt(v):
    if isinstance(v, float):
      return f'{v:.4f}'
    return '-' if v is None else str(v)

  rows = ['| quantity | value |', '| --- | --- |']
  t = summary['threshold']
  for key, value in summary.items():
    name = f'accuracy at L2 <= {t:g}' if key == 'accuracy_at_threshold' \
        else key.replace('_', ' ')
    rows.append(f'| {name} | {fmt(value)} |')
  for key, value in (settings or {}).items():
    if key in DERIVED_SETTINGS:
      continue  # in the preset's label, and in the attack's rows
    if key == 'preset':
      value = attack_label(settings)
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for sub, v in items:
      name = key if sub is None else f'{key}.{sub}'
      rows.append(f'| {name.replace("_", " ")} | {fmt(v)} |')
  return '\n'.join(rows) + '\n'


DATASET_NAMES = {'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST'}


def attack_label(settings: dict) -> Optional[str]:
  """The preset of a run's settings, with the settings it overrode
  (`attacks.settings.preset_label`); None without a preset."""
  if settings.get('preset') is None:
    return None
  return settings_lib.preset_label(settings['preset'],
                                   settings.get('modified'))


def plot_title(settings: Sequence[dict]) -> Optional[str]:
  """What the plotted runs (their settings) share, in words: data set and
  split, N, preset (with the settings a run overrode), classifier; None if
  they share none of them."""

  def common(values):
    return values[0] if values and values.count(values[0]) == len(values) \
        else None

  dataset, split, n, classifier = (
      common([s.get(key) for s in settings])
      for key in ('dataset', 'split', 'num_samples', 'classifier'))
  preset = common([attack_label(s) for s in settings])
  parts = [' '.join(filter(None, (DATASET_NAMES.get(dataset, dataset),
                                  split))),
           n is not None and f'N = {n}',
           preset and f'preset {preset}',
           classifier and f'classifier {classifier}']
  return ', '.join(filter(None, parts)) or None


def accuracy_vs_l2_figure(curves: Sequence[Tuple[str, np.ndarray]],
                          max_threshold: float,
                          threshold: Optional[float] = None,
                          title: Optional[str] = None):
  """Paper Figures 2-5 as a matplotlib Figure: accuracy (amount > t)
  against t, one line per (label, perturbations), each labelled with its
  accuracy at `threshold`, which a dotted line marks."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 5.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for label, perturbations in curves:
    curve = robust_accuracy_curve(perturbations, max_threshold, step=0.005)
    if threshold is not None:
      label = (f'{label}: accuracy {accuracy_at(perturbations, threshold):.3f}'
               f' at L2 \u2264 {threshold:g}')
    ax.plot(curve['thresholds'], curve['accuracy'], label=label)
  if threshold is not None:
    ax.axvline(threshold, color='grey', linestyle=':', linewidth=1,
               label=f'reported threshold: L2 = {threshold:g}')
  ax.set_xlim(0, max_threshold)
  ax.set_ylim(-.02, 1.02)  # a curve at 0 or 1 would hide under the frame
  ax.set_xlabel('L2 budget t of the attack: \u2016x_adv \u2212 x\u2016\u2082 '
                '(pixel values in [0, 1])')
  ax.set_ylabel('Accuracy under attacks of L2 \u2264 t')
  ax.grid(True, alpha=.3)
  # Below the axes, so that no legend covers a curve.
  ax.legend(loc='upper center', bbox_to_anchor=(.5, -.13), frameon=False)
  if title:
    ax.set_title(title)
  return fig


def plot_accuracy_vs_l2(curves: Sequence[Tuple[str, np.ndarray]], path: str,
                        max_threshold: float,
                        threshold: Optional[float] = None,
                        title: Optional[str] = None) -> str:
  """Writes `accuracy_vs_l2_figure` to the PNG `path`; returns the path."""
  fig = accuracy_vs_l2_figure(curves, max_threshold, threshold, title)
  with files.atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png', bbox_inches='tight', dpi=120)
  return path


# --- files ------------------------------------------------------------------

class SettingsMismatchError(run_folder.IdentityMismatchError):
  """The output folder holds batches of a run with other settings."""


def check_settings(out_dir: str, settings: dict, overwrite: bool = False):
  """Writes `settings.json`, or checks that a resumed run matches it.

  Either way, the unfinished writes of a killed run go. With `overwrite`,
  every output of the previous run goes too (`remove_outputs`) before the
  new settings replace the old: a restart interrupted in between never
  leaves old results under new settings.
  """
  os.makedirs(out_dir, exist_ok=True)
  normal = json.loads(json.dumps(settings, sort_keys=True))
  old = None
  if not overwrite:
    old = check_resumable(out_dir, settings)
  run_folder.remove_temporaries(out_dir, LAYOUT)
  if overwrite:
    remove_outputs(out_dir)
  if old != normal:
    run_folder.write_identity(out_dir, SETTINGS_FILE, normal)


def _without_derived(settings):
  return {k: v for k, v in json.loads(json.dumps(settings)).items()
          if k not in DERIVED_SETTINGS}


def check_resumable(out_dir: str, settings: dict,
                    name: str = SETTINGS_FILE) -> Optional[dict]:
  """Raises SettingsMismatchError, naming the keys that differ, if
  `<out_dir>/<name>` holds other settings than `settings` (but the derived
  ones); writes nothing. Returns the saved settings, None if none."""
  return run_folder.check_identity(
      out_dir, name, settings, compared=_without_derived,
      error=SettingsMismatchError,
      advice='; use another --out_dir or --overwrite.')


def shard_batches(num_samples: int, batch_size: int,
                  shard: Optional[Tuple[int, int]] = None) -> list:
  """The batch numbers that shard (i, n) of a run attacks: every b with
  b % n == i (all of them without a shard). Interleaved rather than in
  contiguous ranges: a batch's shard follows from b and n alone, with no
  range boundaries to round, and the shards' sizes differ by one batch at
  most."""
  batches = range(-(-num_samples // batch_size))
  if shard is None:
    return list(batches)
  index, count = shard
  return [b for b in batches if b % count == index]


def batch_numbers(out_dir: str) -> list:
  """The numbers of the finished batches saved in `out_dir`."""
  return [int(re.search(r'(\d+)\.npz$', path).group(1))
          for path in _batch_files(out_dir)]


def batch_path(out_dir: str, index: int) -> str:
  return os.path.join(out_dir, BATCHES_DIR, f'batch_{index:05d}.npz')


def _batch_files(out_dir: str):
  return run_folder.matching_files(os.path.join(out_dir, BATCHES_DIR),
                                   BATCH_FILE)


def remove_outputs(out_dir: str):
  """Removes what a run wrote to `out_dir` (`LAYOUT`) but its
  settings.json; files of other names stay."""
  run_folder.remove_outputs(out_dir, LAYOUT, keep_identity=True)


def _duration(seconds: float) -> str:
  if seconds < 90:
    return f'{seconds:.0f} s'
  if seconds < 5400:
    return f'{seconds / 60:.0f} min'
  return f'{seconds / 3600:.1f} h'


def steady_seconds(ticks) -> Optional[float]:
  """A batch's duration without its first iteration (which compiles the
  attack's graph), from the attack's progress reports `ticks`: (time, i, n)
  after iteration i of n; None with fewer than two reports."""
  if len(ticks) < 2 or ticks[-1][1] == ticks[0][1]:
    return None
  (t0, i0, n), (t1, i1, _) = ticks[0], ticks[-1]
  return (t1 - t0) / (i1 - i0) * n


def eta_line(batch: int, seconds: float, left: int,
             steady: Optional[float] = None,
             now: Optional[float] = None) -> Optional[str]:
  """What the first batch attacked (`batch` samples in `seconds`; `steady`:
  its duration without compiling, `steady_seconds`) says of the `left`
  samples after it, in words; None when none are left. The progress bar
  moves when the attack reports (the paper's attack: after each outer
  iteration), so before this line a long attack may show 0 for minutes."""
  if left <= 0:
    return None
  rest = (seconds if steady is None else steady) * left / batch
  end = time.localtime((time.time() if now is None else now) + rest)
  return (f'first batch: {batch} samples in {_duration(seconds)}; the '
          f'{left} left take about {_duration(rest)} more at this rate '
          f'(done about {time.strftime("%a %H:%M", end)})')


def run_protocol(attack, images, labels, out_dir: str, batch_size: int = 100,
                 seed: int = 0, indices=None, threshold: float = 4.,
                 progress: bool = True,
                 shard: Optional[Tuple[int, int]] = None
                 ) -> Dict[str, np.ndarray]:
  """Attacks (images [N, H, W, C], labels [N]) batch by batch.

  Finished batches are saved to `<out_dir>/batches/batch_XXXXX.npz` and
  loaded instead of recomputed on a restart. Batch b is attacked with seed
  (seed, b), so a resumed run gives the results of an uninterrupted one,
  and the batches of shards (i, n), each attacking only `shard_batches`,
  are those of one run.
  `indices` [N] (positions in the data split) are stored with the results.
  Returns the concatenated arrays (BATCH_KEYS + 'clean_correct',
  'perturbation', 'clean') of the batches attacked.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int64)
  n = len(images)
  indices = np.arange(n) if indices is None else np.asarray(indices)
  os.makedirs(os.path.join(out_dir, BATCHES_DIR), exist_ok=True)
  mine = shard_batches(n, batch_size, shard)
  taken = np.concatenate([np.arange(n)[b * batch_size:(b + 1) * batch_size]
                          for b in mine] or [np.zeros(0, int)])
  parts = []
  bar = tqdm(total=len(taken), unit='img', disable=not progress,
             desc='attack', dynamic_ncols=True)
  first_batch = True  # the first one attacked here, not loaded
  for b in mine:
    start = b * batch_size
    sl = slice(start, start + batch_size)
    path = batch_path(out_dir, b)
    if os.path.exists(path):
      part = _load_batch(path, indices[sl])
      bar.update(len(part['indices']))
    else:
      seed_b = int(np.random.SeedSequence([seed, b]).generate_state(1)[0])
      try:
        part, seconds, ticks = _attack_batch(attack, images[sl], labels[sl],
                                             indices[sl], seed_b, bar)
      except KeyboardInterrupt:
        bar.close()
        raise _stopped(out_dir, n, batch_size, mine) from None
      if first_batch:
        first_batch = False
        m = len(part['indices'])
        estimate = eta_line(m, seconds, np.count_nonzero(taken >= start + m),
                            steady_seconds(ticks))
        if estimate:
          bar.write(estimate, file=sys.stderr)
      files.save_npz(path, part, compressed=True)
    parts.append(part)
    _show_so_far(bar, parts, threshold)
  bar.close()
  return _assemble(parts, images[taken])


def _load_batch(path, indices):
  """A finished batch's arrays; SettingsMismatchError if it holds other
  samples than `indices`."""
  with np.load(path) as z:
    part = {k: z[k] for k in BATCH_KEYS + OPTIONAL_BATCH_KEYS if k in z.files}
  if not np.array_equal(part['indices'], indices):
    raise SettingsMismatchError(f'{path} holds other samples than this '
                                'run would attack there.')
  return part


def _attack_batch(attack, images, labels, indices, seed, bar):
  """Attacks one batch, advancing `bar` by whole images as the attack
  reports its iterations; returns (its arrays, seconds, the reports'
  (time, iteration, total))."""
  m = len(indices)
  shown, ticks = [0], []

  def advance(i, total):
    # Whole images only: fractions print as "3.1999999999999997/6", and
    # their rounding error overshoots the total (tqdm's clamping warning).
    now = m * (i + 1) // total
    bar.update(now - shown[0])
    shown[0] = now
    ticks.append((time.time(), i, total))

  began = time.time()
  result = attack(images, labels, seed=seed, callback=advance)
  seconds = time.time() - began
  bar.update(m - shown[0])  # an attack may report fewer iterations
  part = dict(indices=indices, labels=labels, clean_pred=result.clean_pred,
              success=result.success, attack_l2=result.l2,
              adversarial=result.adversarial,
              **{k: getattr(result, k) for k in OPTIONAL_BATCH_KEYS
                 if hasattr(result, k)})
  return part, seconds, ticks


def _show_so_far(bar, parts, threshold):
  """Clean accuracy, success rate and accuracy at the threshold so far."""
  so_far = {k: np.concatenate([p[k] for p in parts]) for k in BATCH_KEYS}
  correct = so_far['clean_pred'] == so_far['labels']
  pert = protocol_l2(correct, so_far['success'], so_far['attack_l2'])
  rate = np.isfinite(pert[correct]).sum() / max(int(correct.sum()), 1)
  bar.set_postfix(clean=f'{correct.mean():.3f}', success=f'{rate:.3f}',
                  acc_at_t=f'{accuracy_at(pert, threshold):.3f}')


def _assemble(parts, clean):
  """The batches' arrays joined, with 'clean_correct', 'perturbation' (the
  protocol amount), 'clean' and 'adversarial'."""
  out = {k: np.concatenate([p[k] for p in parts]) for k in BATCH_KEYS}
  for k in OPTIONAL_BATCH_KEYS:
    if parts and all(k in p for p in parts):
      out[k] = np.concatenate([p[k] for p in parts])
  out['clean_correct'] = out['clean_pred'] == out['labels']
  out['perturbation'] = protocol_l2(out['clean_correct'], out['success'],
                                    out['attack_l2'])
  # Clean errors keep their clean image (the defence code stores it as the
  # "perturbed" one, with amount 0).
  out['clean'] = clean
  out['adversarial'] = np.where(out['clean_correct'][:, None, None, None],
                                out['adversarial'], out['clean']
                                ).astype(np.float32)
  return out


def _stopped(out_dir: str, n: int, batch_size: int, mine: Sequence[int]):
  """The KeyboardInterrupt of a run stopped in a batch (Ctrl-C, SIGTERM:
  `scae_tf.interrupts`), saying what its folder keeps for the resumed
  run (of the batches `mine` it attacks)."""
  size = lambda b: min(batch_size, n - b * batch_size)
  kept = sorted(set(batch_numbers(out_dir)) & set(mine))
  return interrupts.Interrupted(
      f'kept {len(kept)} of {len(mine)} batches ({sum(map(size, kept))} of '
      f'{sum(map(size, mine))} samples) in '
      f'{os.path.join(out_dir, BATCHES_DIR)}; the batch in progress is lost')


def write_outputs(out_dir: str, results: Dict[str, np.ndarray],
                  settings: dict, threshold: float, max_threshold: float,
                  label: Optional[str] = None) -> dict:
  """Writes the result files; returns the summary."""
  files.save_npz(os.path.join(out_dir, 'l2.npz'), dict(
      perturbation=results['perturbation'],
      attack_l2=results['attack_l2'], success=results['success'],
      clean_correct=results['clean_correct'],
      clean_pred=results['clean_pred'], labels=results['labels'],
      indices=results['indices'],
      **{k: results[k] for k in OPTIONAL_BATCH_KEYS if k in results}),
                 compressed=True)
  files.save_npz(os.path.join(out_dir, 'adversarial.npz'), dict(
      adversarial=results['adversarial'], clean=results['clean'],
      indices=results['indices'], labels=results['labels']), compressed=True)
  extra = None
  if 'success_unquantized' in results:
    correct = results['clean_correct']
    extra = dict(quantized_successes_before=int(
        results['success_unquantized'][correct].sum()),
                 quantized_successes_after=int(
                     results['success'][correct].sum()))
  return write_reports(out_dir, results['perturbation'],
                       results['clean_correct'], settings, threshold,
                       max_threshold, label, extra)


def write_reports(out_dir, perturbations, clean_correct, settings, threshold,
                  max_threshold, label=None, extra=None) -> dict:
  """summary.json / summary.md / robust_accuracy.json / accuracy_vs_l2.png;
  `extra` joins the summary (e.g. the 8-bit rounding's survivors)."""
  summary = dict(summarize(perturbations, clean_correct, threshold),
                 **(extra or {}))
  files.write_json(os.path.join(out_dir, 'summary.json'),
                   dict(summary=summary, settings=settings), sort_keys=True)
  files.write_text(os.path.join(out_dir, 'summary.md'),
                   markdown_table(summary, settings))
  curve = robust_accuracy_curve(perturbations, max_threshold)
  files.write_json(os.path.join(out_dir, 'robust_accuracy.json'),
                   dict(curve, definition='accuracy(t) = fraction of samples '
                        'whose perturbation amount is > t'), sort_keys=True)
  if label is None:
    label = settings.get('classifier', 'model')
    if settings.get('config'):
      label += f', config {settings["config"]}'
  plot_accuracy_vs_l2([(label, perturbations)],
                      os.path.join(out_dir, 'accuracy_vs_l2.png'),
                      max_threshold, threshold, plot_title([settings]))
  return summary


def load_results(out_dir: str) -> Tuple[dict, dict]:
  """(arrays of l2.npz, settings) of a finished run."""
  path = os.path.join(out_dir, 'l2.npz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: no finished run in '
                            f'{out_dir!r}.')
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  settings = {}
  settings_path = os.path.join(out_dir, SETTINGS_FILE)
  if os.path.exists(settings_path):
    with open(settings_path) as f:
      settings = json.load(f)
  return arrays, settings
