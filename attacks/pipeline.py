"""A robustness evaluation from start to finish: the attack of a checkpoint
under the defence code's protocol, and the redrawing of its reports.

  run = AttackRun('runs/teacher_mnist_cpu', 'PosK',
                  out_dir='results/mnist_posk')
  summary = attack_checkpoint(run)
  redraw_reports('results/mnist_posk')
  compare_runs(['results/a', 'results/b'], 'results/cmp', ['SCAE', 'HAT'])

`attack_checkpoint(run)` attacks `run.num_samples` random samples (seeded
by `run.seed`) of a split (default: the paper's, MNIST test / Fashion-MNIST
train) with the attacks of `attacks.registry` that `run` names, each at
its preset (single settings overridden; `attacks.run_spec.AttackRun`), and
writes to the run's folder the files of `attacks.protocol`: l2.npz (0 for
clean errors, inf for failed attacks), adversarial.npz, summary.json,
summary.md, robust_accuracy.json (accuracy at every threshold 0..plot_max)
and accuracy_vs_l2.png (paper Figures 2-5). Finished batches are kept under
`<out_dir>/batches/`, and a rerun with the same settings skips them; a run
with other settings is refused unless `overwrite`.

It resolves the run (`resolve`: the model, the k-means, each attack's
config, gradient and settings), builds the attacks and the samples
(`_build`), and runs them (`_execute`).

A run can be split by sample over processes or machines: shard (i, n) of
it, `AttackRun(..., shard=(i, n))`, attacks only the batches b with
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
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from attacks import protocol
from attacks import registry
from attacks import sanity as sanity_lib
from attacks import settings as settings_lib
from attacks.registry import attack_names
from attacks.run_spec import AttackRun, DATASETS
from scae_tf import cli
from scae_tf import files
from scae_tf import run_folder

#: Every attack of the registry, the paper's first.
SINGLE_ATTACKS = registry.NAMES
#: The sanity checks' PGD run at the box's diameter (`attacks.sanity`).
UNBOUNDED = 'sanity_unbounded'
#: The noise control's per-sample results (`attacks.noise`).
NOISE_FILE = 'noise_control.npz'
#: The input gradient each attack follows unless told otherwise: the paper's
#: attack the authors' training graph, the adaptive attacks (and the sanity
#: check's unbounded PGD) the classifier's true gradient.
DEFAULT_GRADIENTS = {**{n: e.gradient for n, e in registry.ATTACKS.items()},
                     UNBOUNDED: 'full'}


def thresholds(dataset: str, threshold: Optional[float] = None,
               plot_max: Optional[float] = None) -> Tuple[float, float]:
  """(threshold of the summary, largest threshold of the curve): the paper's
  (4 MNIST, 5 Fashion-MNIST) and one more, unless given."""
  if threshold is None:
    cli.check_choice('dataset', dataset, DATASETS)
  t = protocol.PAPER_THRESHOLDS[dataset] if threshold is None else threshold
  return t, t + 1. if plot_max is None else plot_max


def attack_checkpoint(run: AttackRun, *, progress: bool = True,
                      log: Optional[Callable[[str], None]] = None) -> dict:
  """Attacks a checkpoint's classifier as `run` says and writes the
  protocol's outputs (module doc).

  progress: a progress bar on stderr. log: callable(str) for progress
  messages.

  Returns dict(summary=the protocol summary, settings=the run's settings,
  out_dir=the output folder, sanity=the `attacks.sanity.check` report or
  None); for several attacks, summary is the worst case's
  (`attacks.worst_case.summarize`), and runs maps each attack to its own
  dict. A shard's: dict(shard, out_dir, runs, batches: the batch numbers
  it attacked), summary and sanity None.

  Bad settings (an unknown attack, eps <= 0: `AttackRun`; a PGD setting
  out of range) raise before the model is loaded; a k-means target without
  its k-means file before any attack.
  """
  log = log or (lambda msg: None)
  plan = resolve(run, log)
  return _execute(plan, _build(plan), progress, log)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run resolved: what it attacks with which settings, and where.

  run: the request. classifier: its canonical name. names: the attacks,
  then UNBOUNDED if the sanity checks run. split, threshold, t_max: the
  data and the thresholds. out_dir: the run's folder.
  loaded: `scae_tf.loading.load_model`'s answer. kmeans: the k-means
  classifier of PriK / PosK (None otherwise), kmeans_path: its file.
  configs, preset_configs, presets: each attack's config, its preset's
  config as it is, and its preset's name. gradients: each attack's input
  gradient. targets: {gradient: the classifier target}.
  """
  run: AttackRun
  classifier: str
  names: Tuple[str, ...]
  split: str
  threshold: float
  t_max: float
  out_dir: str
  loaded: Any
  kmeans: Any
  kmeans_path: Optional[str]
  configs: Mapping[str, Any]
  preset_configs: Mapping[str, Any]
  presets: Mapping[str, str]
  gradients: Mapping[str, str]
  targets: Mapping[str, Any]

  @property
  def attacks(self) -> Tuple[str, ...]:
    """The attacks the run asked for (without UNBOUNDED)."""
    return tuple(n for n in self.names if n != UNBOUNDED)

  def settings(self, name: str) -> dict:
    """What attack `name`'s folder records (settings.json), which a
    resumed run must match: keep their values, or old runs stop
    resuming. The paper's attack's are those of runs before the other
    attacks existed."""
    run = self.run
    settings = dict(
        checkpoint=os.path.abspath(self.loaded.prefix),
        checkpoint_format=self.loaded.format,
        config=self.loaded.config.name, classifier=self.classifier,
        kmeans=os.path.abspath(self.kmeans_path) if self.kmeans else None,
        dataset=run.dataset, split=self.split, preprocess=run.preprocess,
        num_samples=run.num_samples, batch_size=run.batch_size,
        seed=run.seed, preset=self.presets[name],
        attack=dataclasses.asdict(self.configs[name]),
        gradient=self.gradients[name])
    modified = settings_lib.changed_settings(
        self.preset_configs[name], self.configs[name])
    if modified:
      settings['modified'] = modified
    if name != 'capsule':
      settings['attack_name'] = name
    if run.quantize != 'none' and name != UNBOUNDED:
      settings['quantize'] = run.quantize
    if run.shard is not None:
      settings['shard'] = dict(index=run.shard[0], count=run.shard[1])
    return settings


def resolve(run: AttackRun,
            log: Optional[Callable[[str], None]] = None) -> Plan:
  """`run` resolved into its `Plan`: each attack's settings first (a bad
  one raises before the model loads), then the model, the k-means and the
  targets."""
  # pylint: disable=g-import-not-at-top
  from attacks import classifiers
  from scae_tf import loading
  # pylint: enable=g-import-not-at-top
  log = log or (lambda msg: None)
  threshold, t_max = thresholds(run.dataset, run.threshold, run.plot_max)
  names = run.attack_names() + ((UNBOUNDED,) if run.sanity else ())
  configs, preset_configs, presets = {}, {}, {}
  for name in run.attack_names():
    entry = registry.ATTACKS[name]
    presets[name] = entry.preset(run)
    preset_configs[name], configs[name] = entry.configs(run, threshold)
  # Attacks run without noise: with it, every forward pass would draw anew.
  loaded = loading.load_model(run.checkpoint, run.config,
                              dataset=run.dataset)
  kmeans, kmeans_path = _kmeans(run, loaded, log)
  gradients = {n: run.gradient or DEFAULT_GRADIENTS[n] for n in names}
  targets = {g: classifiers.make_classifier(
      loaded.model, run.classifier_name(), kmeans, gradient=g)
             for g in set(gradients.values())}
  if run.sanity:
    shape = targets[gradients[UNBOUNDED]].image_shape
    presets[UNBOUNDED] = UNBOUNDED
    preset_configs[UNBOUNDED] = sanity_lib.unbounded_config(shape, run.seed)
    configs[UNBOUNDED] = sanity_lib.unbounded_config(
        shape, run.seed, (run.pgd_overrides or {}).get('steps'))
  return Plan(run=run, classifier=run.classifier_name(), names=names,
              split=run.split_name(), threshold=threshold, t_max=t_max,
              out_dir=run.folder(), loaded=loaded, kmeans=kmeans,
              kmeans_path=kmeans_path, configs=configs,
              preset_configs=preset_configs, presets=presets,
              gradients=gradients, targets=targets)


def _kmeans(run: AttackRun, loaded, log) -> Tuple[Any, Optional[str]]:
  """(the k-means classifier of a PriK / PosK run, its file); (None, the
  run's kmeans) for the probes. FileNotFoundError if it has none;
  `kmeans.check_fitted_on` refuses one fitted on other weights or data."""
  # pylint: disable=g-import-not-at-top
  from attacks import classifiers
  from scae_tf import loading
  from scae_tf import kmeans as kmeans_lib
  # pylint: enable=g-import-not-at-top
  name, path, found = run.classifier_name(), run.kmeans, None
  if not name.endswith('K'):
    return None, path
  kind = classifiers.feature_kind_of(name)
  if path is None:
    path = loading.kmeans_path(loaded.prefix, kind)
    found = loaded.kmeans.get(f'{kind}_cosine')
  elif os.path.exists(path):
    found = kmeans_lib.KMeansClassifier.load(path)
  if found is None:
    raise FileNotFoundError(
        f'k-means classifier {path!r} not found; run run/evaluate.py on '
        'the checkpoint or pass --kmeans.')
  kmeans_lib.check_fitted_on(found, path, loaded.prefix, run.dataset,
                             run.preprocess, run.allow_kmeans_mismatch, log)
  return found, path


@dataclasses.dataclass(frozen=True)
class _Built:
  """The attack objects of a plan, and the samples they attack: images,
  their labels, and their indices in the split."""
  attacks: Dict[str, registry.Attack]
  images: np.ndarray
  labels: np.ndarray
  indices: np.ndarray


def _build(plan: Plan) -> _Built:
  """The attacks of `plan` (each on the target of its gradient, wrapped
  for the 8-bit rounding if asked; the unbounded PGD never is), and the
  seed's draw of samples."""
  # pylint: disable=g-import-not-at-top
  from attacks import pgd
  from attacks import quantize as quantize_lib
  from scae_tf import data
  # pylint: enable=g-import-not-at-top
  run = plan.run
  target = lambda n: plan.targets[plan.gradients[n]]
  attacks = {}
  for n in plan.attacks:
    attacks[n] = registry.ATTACKS[n].attack_type()(target(n), plan.configs[n])
    if run.quantize != 'none':
      attacks[n] = quantize_lib.QuantizedAttack(
          attacks[n], target(n), quantize_lib.LEVELS[run.quantize])
  if run.sanity:
    attacks[UNBOUNDED] = pgd.PGDAttack(target(UNBOUNDED),
                                       plan.configs[UNBOUNDED])
  images_u8, labels = data.load_dataset(run.dataset, plan.split, run.data_dir)
  if run.num_samples > len(images_u8):
    raise cli.UsageError(f'num_samples={run.num_samples} exceeds the '
                         f'{len(images_u8)} examples of the {plan.split} '
                         'split.')
  indices = np.random.default_rng(run.seed).choice(
      len(images_u8), run.num_samples, replace=False)
  images = data.preprocess(images_u8[indices], run.preprocess,
                           rng=np.random.default_rng([run.seed, 1]),
                           canvas_size=plan.loaded.config.canvas_size)
  return _Built(attacks, images, labels[indices], indices)


def _execute(plan: Plan, built: _Built, progress: bool, log) -> dict:
  """Runs the attacks of `plan` into its folder, which it holds locked:
  each attack resumes or starts in its folder; then the worst case of
  several, and the sanity checks."""
  run, out_dir = plan.run, plan.out_dir
  folders = run_folders(out_dir, plan.attacks, run.sanity)

  def attack(n):
    return _attack_one(plan, built, n, folders[n], progress, log)

  with run_folder.lock_folder(out_dir):
    if run.overwrite:
      remove_previous_run(out_dir)
    if run.shard is not None:
      record = shard_record(run)
      protocol.check_resumable(out_dir, record, SHARD_FILE)
      files.write_json(os.path.join(out_dir, SHARD_FILE), record,
                       sort_keys=True)
    runs = {n: attack(n) for n in plan.attacks}
    if run.shard is not None:
      if run.sanity:
        attack(UNBOUNDED)
      return dict(shard=run.shard, out_dir=out_dir, runs=runs, summary=None,
                  sanity=None, batches=protocol.shard_batches(
                      run.num_samples, run.batch_size, run.shard))
    if len(plan.attacks) == 1:
      result = runs[plan.attacks[0]]
    else:
      result = dict(runs=runs, out_dir=out_dir, summary=write_worst_case(
          out_dir, [folders[n] for n in plan.attacks], plan.threshold,
          plan.t_max))
    result['sanity'] = None
    if run.sanity:
      result['sanity'] = _check_sanity(plan, built, folders, attack(UNBOUNDED),
                                       log)
  return result


def _attack_one(plan: Plan, built: _Built, n: str, folder: str,
                progress: bool, log) -> dict:
  """Attack `n` of the plan, resumed or started in `folder` (locked for
  it, unless it is the run's folder, locked already); its outputs, but a
  shard's."""
  run, settings = plan.run, plan.settings(n)
  with (contextlib.nullcontext() if folder == plan.out_dir
        else run_folder.lock_folder(folder)):
    protocol.check_settings(folder, settings, run.overwrite)
    loaded = plan.loaded
    log(f'checkpoint {loaded.prefix} ({loaded.format.upper()}, config '
        f'{loaded.config.name}); {plan.classifier}; {run.num_samples} '
        f'samples of {run.dataset}/{plan.split}; attack {n} '
        f'({protocol.attack_label(settings)}, {plan.gradients[n]} '
        f'gradient); out {folder}')
    start = time.time()
    results = protocol.run_protocol(
        built.attacks[n], built.images, built.labels, folder, run.batch_size,
        run.seed, indices=built.indices, threshold=plan.threshold,
        progress=progress, shard=run.shard)
    summary = None if run.shard else protocol.write_outputs(
        folder, results, settings, plan.threshold, plan.t_max)
  if summary and 'quantized_successes_before' in summary:
    log(f'{n}: {summary["quantized_successes_after"]} of '
        f'{summary["quantized_successes_before"]} successes survive the '
        f'{run.quantize} rounding')
  log(f'done in {time.time() - start:.0f} s; results in {folder}')
  return dict(summary=summary, settings=settings, out_dir=folder)


def _check_sanity(plan: Plan, built: _Built, folders: Mapping[str, str],
                  checked: dict, log) -> dict:
  """The sanity report of the finished attacks and of the unbounded PGD
  run `checked`, with the noise control at the threshold (forward passes
  only, seconds: recomputed, not resumed), written beside them."""
  from attacks import noise  # pylint: disable=g-import-not-at-top
  run = plan.run
  noise_correct = noise.noise_control(
      plan.targets[plan.gradients[UNBOUNDED]], built.images, built.labels,
      plan.threshold, seed=run.seed, batch_size=run.batch_size)
  files.save_npz(os.path.join(plan.out_dir, NOISE_FILE), dict(
      correct=noise_correct, indices=built.indices,
      threshold=plan.threshold), compressed=True)
  log(f'noise control: {noise.accuracy(noise_correct):.2%} correct under '
      f'{noise_correct.shape[1]} draws of Gaussian noise at L2 = '
      f'{plan.threshold:g}')
  report = write_sanity(plan.out_dir, {n: folders[n] for n in plan.attacks},
                        checked['out_dir'], noise_correct, plan.threshold)
  log(sanity_lib.markdown(report).rstrip())
  return report


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


#: What a run of `attack_checkpoint` writes into a folder of one attack
#: (the protocol's files), or into its out_dir (also the reports).
RUN_LAYOUT = protocol.LAYOUT.with_files(REPORT_FILES)


def remove_previous_run(out_dir: str):
  """`--overwrite`: removes every output an earlier `attack_checkpoint`
  left in `out_dir`, whichever attacks it ran (one in place, or several in
  their subfolders), so that nothing of it stays beside the new run's
  outputs or resumes under its name. Files it did not write stay."""

  def remove(folder):
    run_folder.remove_outputs(folder, RUN_LAYOUT)
    with contextlib.suppress(OSError):  # kept where other files remain
      os.rmdir(os.path.join(folder, protocol.BATCHES_DIR))

  remove(out_dir)  # the caller holds its lock
  for name in SINGLE_ATTACKS + (UNBOUNDED,):
    folder = os.path.join(out_dir, name)
    if not os.path.exists(os.path.join(folder, protocol.SETTINGS_FILE)):
      continue
    with run_folder.lock_folder(folder):
      remove(folder)
    with contextlib.suppress(OSError):
      os.remove(os.path.join(folder, run_folder.LOCK_FILE))
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


def shard_record(run: AttackRun) -> dict:
  """What SHARD_FILE holds: the shard (index, count) and the request of
  the run (`AttackRun.request`), JSON-able, from which `merge_shards`
  makes the unsharded run."""
  index, count = run.shard
  return json.loads(json.dumps(dict(index=index, count=count,
                                    arguments=run.request())))


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
      raise ShardMismatchError(
          f'{folder} and {shard_dirs[0]} are shards of different runs ('
          f'{run_folder.differences(whole(records[0]), whole(record))}).')
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
        with open(os.path.join(part, protocol.SETTINGS_FILE)) as f:
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
  `attack_checkpoint(AttackRun(..., shard=(i, n)))`), in `out_dir`: after
  `check_shards`, the shards' batch files are copied into it, and the
  unsharded run, with the arguments the shards recorded, finds every batch
  done and writes the reports, the worst case and the sanity report as
  one run would. `overwrite` first removes a previous run in `out_dir`.
  Returns what that `attack_checkpoint` returns."""
  log = log or (lambda msg: None)
  arguments, copies = check_shards(shard_dirs, out_dir, overwrite)
  with run_folder.lock_folder(out_dir):
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
  return attack_checkpoint(AttackRun(**arguments, out_dir=out_dir),
                           progress=progress, log=log)


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
