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

A run can be split by sample over processes or machines: shard (i, n) of
it, `attack_checkpoint(..., shard=(i, n))`, attacks only the batches b with
b % n == i into its own folder, which records the shard; `merge_shards`
then gives, from the n folders, the files of the unsharded run.

PriK / PosK use a k-means classifier: by default the one `run/evaluate.py`
saved beside the checkpoint on cosine distance. One fitted on another
checkpoint, dataset or preprocessing than the attack's is refused, unless
`allow_kmeans_mismatch`.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

from attacks import protocol
from attacks import sanity as sanity_lib
from scae_tf import cli
from scae_tf import files
from attacks.quantize import QUANTIZE
from scae_tf.configs import GRADIENTS

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
                      attack: str = 'capsule', pgd_preset: str = 'pgd_l2_min',
                      eps: Optional[float] = None,
                      pgd_overrides: Optional[dict] = None,
                      gradient: Optional[str] = None,
                      quantize: str = 'none',
                      out_dir: Optional[str] = None, overwrite: bool = False,
                      threshold: Optional[float] = None,
                      plot_max: Optional[float] = None,
                      progress: bool = True, sanity: bool = True,
                      log: Optional[Callable[[str], None]] = None,
                      shard: Optional[Tuple[int, int]] = None) -> dict:
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
    attack: 'capsule' (the paper's), 'pgd_l2' (`attacks.pgd` on the
      classifier's margin), 'margin_cw' (`attacks.margin_cw`: the paper's
      search on the margin, preset 'margin_cw' with `overrides` applied
      as to the capsule attack's), 'ddn' (`attacks.ddn`, Rony et al.
      2019, 100 steps), 'fmn' (FMN of Pintor et al. 2021 through Foolbox,
      `attacks.foolbox_attacks`), several of them joined by commas, or
      'all' (every one). Several run on the same samples, each in
      `<out_dir>/<attack>/`, with their per-sample worst case in
      `out_dir` (`write_worst_case`).
    pgd_preset, eps, pgd_overrides: `attacks.pgd.get_config(pgd_preset,
      eps=eps, **pgd_overrides)`; eps defaults to the threshold for a
      fixed-budget preset, to the preset's search ceiling for `pgd_l2_min`.
    gradient: the input gradient every attack follows, 'code' (the
      training graph's, with its stop-gradients) or 'full' (the
      classifier's true gradient; `scae_tf.configs.GRADIENTS`). None: each
      attack's own (`DEFAULT_GRADIENTS`): the paper's attack 'code', as the
      authors' attack differentiated that graph; the adaptive ones 'full'.
    quantize: 'none' or '8bit': every successful image rounded to the 256
      grey levels an 8-bit image file holds, re-verified, and counted only
      if still misclassified (`attacks.quantize`); the summaries say how
      many survived.
    out_dir: default `default_out_dir(dataset, classifier, preset)` (the
      PGD preset's name for pgd_l2, 'all' for all).
    overwrite: restart: remove every output of the run in `out_dir` first
      (`protocol.remove_outputs`).
    threshold, plot_max: see `thresholds`.
    progress: a progress bar on stderr.
    sanity: run the checks of `attacks.sanity` (PGD at the box's diameter
      on the same samples, in `<out_dir>/sanity_unbounded/`, with the run's
      PGD steps; Gaussian noise at the threshold, `attacks.noise`, in
      `<out_dir>/noise_control.npz`) and write sanity.json and sanity.md to
      `out_dir`.
    log: callable(str) for progress messages.
    shard: (i, n): attack only the batches b with b % n == i
      (`protocol.shard_batches`), into `out_dir` (default: the default
      out_dir with `_shard<i>of<n>`), whose settings record the shard and
      whose SHARD_FILE holds this call's arguments; no reports, worst case
      or sanity report: `merge_shards` writes them from the n shards.

  Returns:
    dict(summary=the protocol summary, settings=the run's settings,
    out_dir=the output folder, sanity=the `attacks.sanity.check` report or
    None); for several attacks, summary is the worst case's
    (`attacks.worst_case.summarize`), and runs maps each attack to its
    own dict. A shard's: dict(shard, out_dir, runs, batches: the batch
    numbers it attacked), summary and sanity None.

  Bad settings (an unknown attack, eps <= 0, a PGD setting out of range)
  raise before the model is loaded; a k-means target without its k-means
  file before any attack.
  """
  # First: the arguments as called, which a shard records for the merge.
  call = dict(locals())
  # Imported here: the reports alone need neither TensorFlow nor a model.
  # pylint: disable=g-import-not-at-top
  from attacks import classifiers, ddn, evasion, foolbox_attacks, margin_cw
  from attacks import noise, pgd
  from attacks import quantize as quantize_lib
  from attacks import settings as settings_lib
  from scae_tf import data, loading
  from scae_tf import kmeans as kmeans_lib
  from scae_tf.kmeans import KMeansClassifier
  from scae_tf.training import run_dir
  # pylint: enable=g-import-not-at-top
  log = log or (lambda msg: None)
  name, names = check_arguments(
      classifier, dataset=dataset, split=split, preprocess=preprocess,
      num_samples=num_samples, batch_size=batch_size, preset=preset,
      overrides=overrides, attack=attack, pgd_preset=pgd_preset, eps=eps,
      gradient=gradient, quantize=quantize, shard=shard)
  split = split or protocol.DEFAULT_SPLITS[dataset]
  threshold, t_max = thresholds(dataset, threshold, plot_max)
  # Each attack's preset as is, and with the run's overrides: the labels
  # name the settings that differ (`settings_lib.preset_label`).
  attack_configs, preset_configs = {}, {}
  if 'capsule' in names:
    preset_configs['capsule'] = evasion.get_config(preset, seed=seed)
    attack_configs['capsule'] = evasion.get_config(preset, seed=seed,
                                                   **(overrides or {}))
  if 'margin_cw' in names:
    preset_configs['margin_cw'] = margin_cw.get_config(seed=seed)
    attack_configs['margin_cw'] = margin_cw.get_config(seed=seed,
                                                       **(overrides or {}))
  if 'pgd_l2' in names:
    preset_configs['pgd_l2'] = pgd_config(pgd_preset, None, threshold, seed)
    attack_configs['pgd_l2'] = pgd_config(pgd_preset, eps, threshold, seed,
                                          pgd_overrides)
  if 'ddn' in names:
    attack_configs['ddn'] = ddn.get_config('ddn', seed=seed)
  if 'fmn' in names:
    attack_configs['fmn'] = foolbox_attacks.get_config('fmn', seed=seed)
  presets = dict(capsule=preset, pgd_l2=pgd_preset, margin_cw='margin_cw',
                 ddn='ddn', fmn='fmn')
  out_dir = out_dir or default_out_dir(
      dataset, name, presets[names[0]] if len(names) == 1 else
      'all' if attack == 'all' else '+'.join(names)) + (
          '' if shard is None else f'_shard{shard[0]}of{shard[1]}')

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
  gradients = {n: gradient or DEFAULT_GRADIENTS[n]
               for n in names + ((UNBOUNDED,) if sanity else ())}
  targets = {g: classifiers.make_classifier(loaded.model, name, kmeans_clf,
                                            gradient=g)
             for g in set(gradients.values())}
  kinds = dict(capsule=evasion.CapsuleAttack, pgd_l2=pgd.PGDAttack,
               margin_cw=margin_cw.MarginCWAttack, ddn=ddn.DDNAttack,
               fmn=foolbox_attacks.FoolboxAttack)
  attacks = {n: kinds[n](targets[gradients[n]], attack_configs[n])
             for n in names}
  if quantize != 'none':
    attacks = {n: quantize_lib.QuantizedAttack(a, targets[gradients[n]],
                                               quantize_lib.LEVELS[quantize])
               for n, a in attacks.items()}
  if sanity:
    shape = targets[gradients[UNBOUNDED]].image_shape
    preset_configs[UNBOUNDED] = sanity_lib.unbounded_config(shape, seed)
    attack_configs[UNBOUNDED] = sanity_lib.unbounded_config(
        shape, seed, (pgd_overrides or {}).get('steps'))
    presets[UNBOUNDED] = UNBOUNDED
    attacks[UNBOUNDED] = pgd.PGDAttack(targets[gradients[UNBOUNDED]],
                                       attack_configs[UNBOUNDED])

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
  common = dict(
      checkpoint=os.path.abspath(prefix), checkpoint_format=loaded.format,
      config=config.name, classifier=name,
      kmeans=os.path.abspath(kmeans) if kmeans_clf else None,
      dataset=dataset, split=split, preprocess=preprocess,
      num_samples=num_samples, batch_size=batch_size, seed=seed)

  def run(n, folder):
    # The capsule attack's settings are those of runs before PGD existed,
    # so that they resume.
    settings = dict(common, preset=presets[n],
                    attack=dataclasses.asdict(attack_configs[n]),
                    gradient=gradients[n])
    modified = settings_lib.changed_settings(
        preset_configs.get(n, attack_configs[n]), attack_configs[n])
    if modified:
      settings['modified'] = modified
    if n != 'capsule':
      settings['attack_name'] = n
    if quantize != 'none' and n != UNBOUNDED:
      settings['quantize'] = quantize
    if shard is not None:
      settings['shard'] = dict(index=shard[0], count=shard[1])
    # out_dir itself is locked for the whole call below.
    with (contextlib.nullcontext() if folder == out_dir
          else run_dir.lock_folder(folder)):
      protocol.check_settings(folder, settings, overwrite)
      log(f'checkpoint {prefix} ({loaded.format.upper()}, config '
          f'{config.name}); {name}; {num_samples} samples of '
          f'{dataset}/{split}; attack {n} ({protocol.attack_label(settings)}, '
          f'{gradients[n]} gradient); out {folder}')
      start = time.time()
      results = protocol.run_protocol(
          attacks[n], images, labels[indices], folder, batch_size, seed,
          indices=indices, threshold=threshold, progress=progress,
          shard=shard)
      summary = None if shard else protocol.write_outputs(
          folder, results, settings, threshold, t_max)
    if summary and 'quantized_successes_before' in summary:
      log(f'{n}: {summary["quantized_successes_after"]} of '
          f'{summary["quantized_successes_before"]} successes survive the '
          f'{quantize} rounding')
    log(f'done in {time.time() - start:.0f} s; results in {folder}')
    return dict(summary=summary, settings=settings, out_dir=folder)

  with run_dir.lock_folder(out_dir):
    if overwrite:
      remove_previous_run(out_dir)
    if shard is not None:
      record = shard_record(call)
      protocol.check_resumable(out_dir, record, SHARD_FILE)
      files.write_json(os.path.join(out_dir, SHARD_FILE), record,
                       sort_keys=True)
    folders = run_folders(out_dir, names, sanity)
    runs = {n: run(n, folders[n]) for n in names}
    if shard is not None:
      if sanity:
        run(UNBOUNDED, folders[UNBOUNDED])
      return dict(shard=shard, out_dir=out_dir, runs=runs, summary=None,
                  sanity=None, batches=protocol.shard_batches(
                      num_samples, batch_size, shard))
    if len(names) == 1:
      result = runs[names[0]]
    else:
      result = dict(runs=runs, out_dir=out_dir, summary=write_worst_case(
          out_dir, [folders[n] for n in names], threshold, t_max))
    result['sanity'] = None
    if sanity:
      checked = run(UNBOUNDED, folders[UNBOUNDED])
      # Forward passes only (seconds): recomputed, not resumed.
      noise_correct = noise.noise_control(
          targets[gradients[UNBOUNDED]], images, labels[indices], threshold,
          seed=seed, batch_size=batch_size)
      files.save_npz(os.path.join(out_dir, NOISE_FILE), dict(
          correct=noise_correct, indices=indices, threshold=threshold),
                     compressed=True)
      log(f'noise control: {noise.accuracy(noise_correct):.2%} correct under '
          f'{noise_correct.shape[1]} draws of Gaussian noise at L2 = '
          f'{threshold:g}')
      result['sanity'] = write_sanity(
          out_dir, {n: folders[n] for n in names}, checked['out_dir'],
          noise_correct, threshold)
      log(sanity_lib.markdown(result['sanity']).rstrip())
  return result


def check_arguments(classifier: str, *, dataset: str = 'mnist',
                    split: Optional[str] = None, preprocess: str = 'resize',
                    num_samples: int = 5000, batch_size: int = 100,
                    preset='paper_eval', overrides: Optional[dict] = None,
                    attack: str = 'capsule', pgd_preset='pgd_l2_min',
                    eps: Optional[float] = None,
                    gradient: Optional[str] = None,
                    quantize: str = 'none',
                    shard: Optional[Tuple[int, int]] = None
                    ) -> Tuple[str, Tuple[str, ...]]:
  """The checks of `attack_checkpoint`'s arguments that need neither a
  model nor TensorFlow (`run/attack.py` runs them before TensorFlow loads):
  ValueError (UsageError) on a bad one. Returns (the classifier's name,
  the attacks' names). The numbers of an attack's settings are checked
  where its config is built."""
  # pylint: disable=g-import-not-at-top
  from attacks import names as names_lib
  from attacks import settings as settings_lib
  from scae_tf import data
  # pylint: enable=g-import-not-at-top
  cli.check_choice('dataset', dataset, DATASETS)
  cli.check_choice('preprocess', preprocess, data.MODES)
  cli.check_choice('split', split, (None,) + tuple(data.SPLITS))
  cli.check_positive('num_samples', num_samples)
  cli.check_positive('batch_size', batch_size)
  name = names_lib.classifier_name(classifier)
  names = attack_names(attack)
  if gradient is not None:
    cli.check_choice('gradient', gradient, GRADIENTS)
  cli.check_choice('quantize', quantize, QUANTIZE)
  if eps is not None:
    settings_lib.check_positive_number('eps', eps)
  # The presets by name (a config object is checked when built), in the
  # words of `settings_lib.preset_config`.
  for runs, what, given, known in (
      ('capsule', 'attack', preset, names_lib.PRESETS),
      ('pgd_l2', 'PGD', pgd_preset, names_lib.PGD_PRESETS)):
    if runs in names and isinstance(given, str) and given not in known:
      raise cli.UsageError(f'Unknown {what} preset {given!r}; expected one '
                           f'of {", ".join(known)}.')
  for key, choices in (('optimizer', names_lib.OPTIMIZERS),
                       ('subset', names_lib.SUBSET_RULES),
                       ('capsule_loss', names_lib.CAPSULE_LOSSES),
                       ('const_coupling', names_lib.CONST_COUPLINGS),
                       ('success', names_lib.SUCCESS_RULES)):
    if key in (overrides or {}):
      cli.check_choice(key, overrides[key], choices)
  if shard is not None:
    check_shard(shard, num_samples, batch_size)
  return name, names


def check_shard(shard: Tuple[int, int], num_samples: int, batch_size: int):
  """UsageError unless shard (i, n) has 0 <= i < n and every one of the n
  shards of the run gets a batch."""
  index, count = shard
  cli.check_positive('shards', count)
  if not 0 <= index < count:
    raise cli.UsageError(f'shard must be 0 to {count - 1} (one of '
                         f'shards={count}), got {index}.')
  batches = len(protocol.shard_batches(num_samples, batch_size))
  if count > batches:
    raise cli.UsageError(
        f'shards={count} exceeds the {batches} batches of the run '
        f'({num_samples} samples, {batch_size} a batch): a shard would '
        'attack none.')


#: The paper's attack first: the worst case counts the samples where each
#: other attack needs less than it.
SINGLE_ATTACKS = ('capsule', 'pgd_l2', 'margin_cw', 'ddn', 'fmn')
#: The input gradient each attack follows unless told otherwise: the paper's
#: attack the authors' training graph, the adaptive attacks (and the sanity
#: check's unbounded PGD) the classifier's true gradient.
ATTACKS = SINGLE_ATTACKS + ('all',)
#: The sanity checks' PGD run at the box's diameter (`attacks.sanity`).
UNBOUNDED = 'sanity_unbounded'
#: The noise control's per-sample results (`attacks.noise`).
NOISE_FILE = 'noise_control.npz'
DEFAULT_GRADIENTS = dict(capsule='code', pgd_l2='full', margin_cw='full',
                         ddn='full', fmn='full', **{UNBOUNDED: 'full'})


def attack_names(attack: str) -> Tuple[str, ...]:
  """The attacks that `attack` ('all', a name or names joined by commas)
  runs, in the order of SINGLE_ATTACKS; UsageError for an unknown or
  repeated name."""
  if attack == 'all':
    return SINGLE_ATTACKS
  names = [n.strip() for n in str(attack).split(',')]
  for n in names:
    cli.check_choice('attack', n, ATTACKS if len(names) == 1
                     else SINGLE_ATTACKS)
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise cli.UsageError(f'attack {", ".join(repeated)} listed twice in '
                         f'{attack!r}.')
  return tuple(n for n in SINGLE_ATTACKS if n in names)


def pgd_config(preset: str, eps: Optional[float], threshold: float,
               seed: int, overrides: Optional[dict] = None):
  """The PGD settings of a run: eps given, else the threshold for a
  fixed-budget preset (its robust accuracy there is the number to report),
  else the preset's search ceiling."""
  from attacks import pgd  # pylint: disable=g-import-not-at-top
  config = pgd.get_config(preset, seed=seed, **(overrides or {}))
  if eps is None and not config.search_steps:
    eps = threshold
  return config if eps is None else pgd.get_config(config, eps=eps)


def write_worst_case(out_dir: str, folders: Sequence[str], threshold: float,
                     max_threshold: float) -> dict:
  """The per-sample worst case of finished runs on the same samples
  (`attacks.worst_case`): worst_case.npz (the merged amounts, the index of
  the attack that achieved each, every attack's amounts), worst_case.json,
  worst_case.md, and accuracy_vs_l2.png with every attack's curve and the
  worst case's. Returns the summary."""
  from attacks import worst_case  # pylint: disable=g-import-not-at-top
  amounts, runs = {}, []
  for folder in folders:
    arrays, settings = protocol.load_results(folder)
    name = settings.get('attack_name', 'capsule')
    if runs and not np.array_equal(arrays['indices'], runs[0][0]['indices']):
      raise ValueError(f'{folder} attacked other samples than {folders[0]}.')
    amounts[name] = arrays['perturbation']
    runs.append((arrays, settings))
  merged = worst_case.merge(amounts)
  clean_correct = runs[0][0]['clean_correct']
  summary = worst_case.summarize(merged, amounts, clean_correct, threshold,
                                 max_threshold)
  files.save_npz(os.path.join(out_dir, 'worst_case.npz'), dict(
      perturbation=merged.l2, winner=merged.winner,
      names=np.array(merged.names), indices=runs[0][0]['indices'],
      clean_correct=clean_correct,
      **{f'perturbation_{n}': a for n, a in amounts.items()}),
                 compressed=True)
  # Relative, as in sanity.json: the folder may move.
  files.write_json(os.path.join(out_dir, 'worst_case.json'),
                   dict(summary=summary, runs=[
                       os.path.relpath(f, out_dir) for f in folders]),
                   sort_keys=True)
  files.write_text(os.path.join(out_dir, 'worst_case.md'),
                   protocol.markdown_table(summary))
  curves = list(amounts.items()) + [('worst case', merged.l2)]
  protocol.plot_accuracy_vs_l2(
      curves, os.path.join(out_dir, 'accuracy_vs_l2.png'), max_threshold,
      threshold, protocol.plot_title([s for _, s in runs]))
  return summary


#: A shard's record of the call that made it (`shard_record`).
SHARD_FILE = 'shard.json'
#: What a run of `attack_checkpoint` writes into its out_dir beside the
#: protocol's outputs: the worst case, the sanity report, the noise control,
#: a shard's record.
REPORT_FILES = ('worst_case.npz', 'worst_case.json', 'worst_case.md',
                'sanity.json', 'sanity.md', NOISE_FILE, SHARD_FILE)


def remove_previous_run(out_dir: str):
  """`--overwrite`: removes every output an earlier `attack_checkpoint`
  left in `out_dir`, whichever attacks it ran (one in place, or several in
  their subfolders), so that nothing of it stays beside the new run's
  outputs or resumes under its name. Files it did not write stay."""
  from scae_tf.training import run_dir  # pylint: disable=g-import-not-at-top

  def remove(folder):
    protocol.remove_outputs(folder)
    for name in ('settings.json',) + REPORT_FILES:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, name))
    with contextlib.suppress(OSError):  # kept where other files remain
      os.rmdir(os.path.join(folder, 'batches'))

  remove(out_dir)  # the caller holds its lock
  for name in SINGLE_ATTACKS + (UNBOUNDED,):
    folder = os.path.join(out_dir, name)
    if not os.path.exists(os.path.join(folder, 'settings.json')):
      continue
    with run_dir.lock_folder(folder):
      remove(folder)
    with contextlib.suppress(OSError):
      os.remove(os.path.join(folder, run_dir.LOCK_FILE))
      os.rmdir(folder)


def run_folders(out_dir: str, names: Sequence[str],
                sanity: bool) -> dict:
  """{attack: its folder} of a run of the attacks `names` into `out_dir`:
  one attack in out_dir itself, several each in its subfolder; the sanity
  checks' unbounded PGD in its subfolder."""
  folders = {n: out_dir if len(names) == 1 else os.path.join(out_dir, n)
             for n in names}
  if sanity:
    folders[UNBOUNDED] = os.path.join(out_dir, UNBOUNDED)
  return folders


#: The arguments of `attack_checkpoint` that say where a run writes and what
#: it shows, not what it computes: a shard's record leaves them out, and
#: the merge gives its own.
PLACE_ARGUMENTS = ('out_dir', 'overwrite', 'progress', 'log', 'shard')
#: The arguments that are paths: recorded absolute, so that the merge reads
#: the same files from another working folder.
PATH_ARGUMENTS = ('checkpoint', 'kmeans', 'data_dir')


def shard_record(call: Mapping) -> dict:
  """What SHARD_FILE holds: the shard (index, count) and the arguments of
  the `attack_checkpoint` call `call` (its locals), JSON-able, from which
  `merge_shards` makes the unsharded run."""
  arguments = {k: v for k, v in call.items() if k not in PLACE_ARGUMENTS}
  for key in PATH_ARGUMENTS:
    if arguments[key] is not None:
      arguments[key] = os.path.abspath(arguments[key])
  if dataclasses.is_dataclass(arguments['config']):
    arguments['config'] = dataclasses.asdict(arguments['config'])
  index, count = call['shard']
  return json.loads(json.dumps(dict(index=index, count=count,
                                    arguments=arguments)))


class ShardMismatchError(protocol.SettingsMismatchError):
  """Folders that are not the complete shards of one run."""


def check_shards(shard_dirs: Sequence[str], out_dir: str,
                 overwrite: bool = False) -> Tuple[dict, list]:
  """The checks of `merge_shards`, before it writes anything: that
  `shard_dirs` are the n shards of one run (the same arguments; every
  shard once), each complete (its batches, of each of its attacks, and no
  other), and that `out_dir` holds nothing of another run (unless
  `overwrite`). Raises ShardMismatchError naming what differs or lacks;
  returns (the run's arguments, [(a shard's batch file, its path in
  out_dir)])."""
  records = []
  for folder in shard_dirs:
    path = os.path.join(folder, SHARD_FILE)
    if not os.path.exists(path):
      raise ShardMismatchError(
          f'{folder} holds no shard of an attack ({SHARD_FILE} not found; a '
          'shard is a run with --shards and --shard).')
    with open(path) as f:
      records.append(json.load(f))
  whole = lambda record: {k: v for k, v in record.items() if k != 'index'}
  for folder, record in zip(shard_dirs[1:], records[1:]):
    if whole(record) != whole(records[0]):
      from scae_tf.training import run_dir  # pylint: disable=g-import-not-at-top
      raise ShardMismatchError(
          f'{folder} and {shard_dirs[0]} are shards of different runs ('
          f'{run_dir.differences(whole(records[0]), whole(record))}).')
  count, arguments = records[0]['count'], records[0]['arguments']
  by_index = {}
  for folder, record in zip(shard_dirs, records):
    if record['index'] in by_index:
      raise ShardMismatchError(
          f'shard {record["index"]} of {count} given twice: '
          f'{by_index[record["index"]]} and {folder}.')
    by_index[record['index']] = folder
  missing = sorted(set(range(count)) - set(by_index))
  if missing:
    raise ShardMismatchError(
        f'shard {", ".join(map(str, missing))} of {count} missing: the merge '
        f'needs all {count} shards.')
  if os.path.abspath(out_dir) in map(os.path.abspath, shard_dirs):
    raise ShardMismatchError(f'the merge writes into {out_dir}, a shard: '
                             'give it another folder.')
  names = attack_names(arguments['attack'])
  targets = run_folders(out_dir, names, arguments['sanity'])
  copies = []
  for index, folder in sorted(by_index.items()):
    wanted = protocol.shard_batches(arguments['num_samples'],
                                    arguments['batch_size'], (index, count))
    for name, part in run_folders(folder, names,
                                  arguments['sanity']).items():
      found = protocol.batch_numbers(part)
      if found != wanted:
        lacking = sorted(set(wanted) - set(found))
        raise ShardMismatchError(
            f'{part}: shard {index} of {count} lacks batches {lacking}; run '
            'the shard to its end before merging.' if lacking else
            f'{part} holds batches {sorted(set(found) - set(wanted))} of '
            f'another shard than its own ({index} of {count}).')
      if index == 0 and not overwrite:
        with open(os.path.join(part, 'settings.json')) as f:
          settings = json.load(f)
        settings.pop('shard', None)
        protocol.check_resumable(targets[name], settings)
      copies += [(protocol.batch_path(part, b),
                  protocol.batch_path(targets[name], b)) for b in found]
  return arguments, copies


def merge_shards(shard_dirs: Sequence[str], out_dir: str,
                 overwrite: bool = False, progress: bool = True,
                 log: Optional[Callable[[str], None]] = None) -> dict:
  """The files of the unsharded run from its n shards (folders of
  `attack_checkpoint(..., shard=(i, n))`), in `out_dir`: after
  `check_shards`, the shards' batch files are copied into it, and the
  unsharded run, with the arguments the shards recorded, finds every batch
  done and writes the reports, the worst case and the sanity report as
  one run would. `overwrite` first removes a previous run in `out_dir`.
  Returns what that `attack_checkpoint` returns."""
  log = log or (lambda msg: None)
  arguments, copies = check_shards(shard_dirs, out_dir, overwrite)
  # After the checks: a refused merge answers before TensorFlow loads.
  from scae_tf.training import run_dir  # pylint: disable=g-import-not-at-top
  with run_dir.lock_folder(out_dir):
    if overwrite:
      remove_previous_run(out_dir)
    for source, target in copies:
      with open(source, 'rb') as f, files.atomic_open(target, 'wb') as g:
        shutil.copyfileobj(f, g)
  log(f'merged {len(shard_dirs)} shards: {len(copies)} batch files copied '
      f'into {out_dir}')
  if isinstance(arguments['config'], dict):
    from scae_tf import configs  # pylint: disable=g-import-not-at-top
    arguments['config'] = configs.ScaeConfig(**arguments['config'])
  return attack_checkpoint(**arguments, out_dir=out_dir, progress=progress,
                           log=log)


def write_sanity(out_dir: str, folders: Mapping[str, str],
                 unbounded_folder: str, noise_correct=None,
                 threshold: Optional[float] = None) -> dict:
  """`attacks.sanity.check` of finished runs {attack: folder} and of the
  unbounded PGD run, against the curves their robust_accuracy.json show,
  and against the noise control `noise_correct` at `threshold` (None skips
  it); writes sanity.json and sanity.md to `out_dir`, returns the
  report."""
  amounts, curves, ceilings, first = {}, {}, {}, None
  for name, folder in folders.items():
    arrays, settings = protocol.load_results(folder)
    first = first or arrays
    amounts[name] = arrays['perturbation']
    # The attacks with a budget (PGD) name it; the others have none.
    if settings['attack'].get('eps') is not None:
      ceilings[name] = settings['attack']['eps']
    with open(os.path.join(folder, 'robust_accuracy.json')) as f:
      curves[name] = json.load(f)['accuracy']
  unbounded, settings = protocol.load_results(unbounded_folder)
  if not np.array_equal(unbounded['indices'], first['indices']):
    raise ValueError(f'{unbounded_folder} attacked other samples than '
                     f'{list(folders.values())[0]}.')
  report = sanity_lib.check(
      amounts, first['clean_correct'], unbounded['perturbation'],
      settings['attack']['eps'], curves, unbounded['clean_correct'],
      first['indices'], ceilings, noise_correct, threshold)
  # Relative: the folder may move, and its files stay those of the run.
  where = lambda folder: os.path.relpath(folder, out_dir)
  files.write_json(os.path.join(out_dir, 'sanity.json'),
                   dict(report, runs={n: where(f) for n, f in folders.items()},
                        unbounded_run=where(unbounded_folder)),
                   sort_keys=True)
  files.write_text(os.path.join(out_dir, 'sanity.md'),
                   sanity_lib.markdown(report))
  return report


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
