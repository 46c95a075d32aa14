"""Shipping a trained SCAE in the repository (`pretrained/<name>/`).

A pretrained folder holds what `run/attack.py --checkpoint=pretrained/<name>`
and `scae_tf.loading.load_model` need, and nothing to train on:

  model.index, model.data-*        the weights only (no optimiser slots)
  model.config.json                its model config
  checkpoint                       names `model`, relative to the folder
  model.kmeans_<kind>_cosine.npz   the fork's cosine k-means, fitted on the
                                   train split of the exported weights
  model.eval.json                  their report (`scae_tf.evaluation`)
  MODEL_CARD.md                    provenance, accuracy and deviations

The card is written from the source run's `run.json` and from the report, so
every number in it was measured on the files beside it.

An export writes into a temporary folder beside `out` (`.<name>.partial-<pid>`)
and renames it to `out` once everything is written: interrupted, it leaves
no half-written folder (the temporary one goes, and one left by a killed
export goes with the next export to that name).
"""

import json
import os
import re
import shutil

from scae_tf import checkpoints
from scae_tf import evaluation
from scae_tf import files
from scae_tf import loading
from scae_tf.training import curves

PREFIX = 'model'
#: The temporary folder of an export: `.<name><PARTIAL><pid>`.
PARTIAL = '.partial-'
#: The card's section that `card_deviations` reads back.
DEVIATIONS_HEADING = '## Deviations from the paper'
#: What a pretrained folder may weigh: it lives in git.
MAX_BYTES = 12 * 2 ** 20


def export(source, out, dataset='mnist', *, command=None, data_dir=None,
           max_examples=None, overwrite=False, progress=True, log=print):
  """Writes the weights of `source` (a run folder or any checkpoint
  `load_model` reads) to the folder `out`, fits and saves its k-means, and
  writes its model card. Returns the card's path.

  `command`: how the source run was trained, for the card.
  `max_examples`: fit and evaluate the k-means on the first examples of each
  split only (`--eval_examples`; tests); the card says how many.
  `out` appears whole or not at all (see the module's doc); with
  `overwrite`, the previous export there is replaced only then.
  """
  out = os.path.normpath(out)
  if os.path.exists(out) and os.listdir(out) and not overwrite:
    raise FileExistsError(f'{out!r} is not empty; pass --overwrite to '
                          'replace it.')
  parent = files.check_writable(os.path.dirname(os.path.abspath(out)))
  name = os.path.basename(out)
  _remove_stale_partials(parent, name)
  os.makedirs(parent, exist_ok=True)
  partial = os.path.join(parent, f'.{name}{PARTIAL}{os.getpid()}')
  shutil.rmtree(partial, ignore_errors=True)
  try:
    os.makedirs(partial)
    card = _export_into(partial, name, source, dataset, command, data_dir,
                        max_examples, progress, log)
    if os.path.exists(out):
      old = os.path.join(parent, f'.{name}.replaced-{os.getpid()}')
      os.rename(out, old)
      try:
        os.rename(partial, out)
      except BaseException:
        os.rename(old, out)
        raise
      shutil.rmtree(old)
    else:
      os.rename(partial, out)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  path = os.path.join(out, os.path.basename(card))
  log(f'model card: {path}')
  return path


def _remove_stale_partials(parent, name):
  """Removes the temporary folders that killed exports to `name` left (their
  process runs no more)."""
  pattern = re.compile(rf'\.{re.escape(name)}{re.escape(PARTIAL)}(\d+)')
  for entry in os.listdir(parent) if os.path.isdir(parent) else ():
    match = pattern.fullmatch(entry)
    if not match:
      continue
    try:
      os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    except PermissionError:
      pass  # another user's process: running


def _export_into(out, name, source, dataset, command, data_dir, max_examples,
                 progress, log):
  """The export's files, in the folder `out` (the temporary one) of the
  model `name`. Returns the card's path."""
  loaded = loading.load_model(source, dataset=dataset, kmeans=False)
  prefix = os.path.join(out, PREFIX)
  checkpoints.save_tf2_checkpoint(loaded.model, prefix)
  # The state file `tf.train.latest_checkpoint` reads, naming the prefix
  # relative to the folder, so that it works wherever the repository is
  # cloned.
  files.write_text(os.path.join(out, 'checkpoint'),
                   f'model_checkpoint_path: "{PREFIX}"\n'
                   f'all_model_checkpoint_paths: "{PREFIX}"\n')
  size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
  if size > MAX_BYTES:
    raise ValueError(f'The exported weights take {size / 2 ** 20:.1f} MiB, '
                     f'more than the {MAX_BYTES // 2 ** 20} MiB a pretrained '
                     'folder may take.')
  log(f'weights of {loaded.prefix} ({size / 2 ** 20:.1f} MiB)')
  report = evaluation.evaluate_checkpoint(
      prefix, dataset, data_dir=data_dir, kmeans='cosine',
      max_examples=max_examples, progress=progress, log=log)
  card = model_card(name, loaded, report, _run_folder(source), command)
  return files.write_text(os.path.join(out, 'MODEL_CARD.md'), card)


def _run_folder(source):
  """The run folder a checkpoint path belongs to, or None."""
  folder = source if os.path.isdir(source) else os.path.dirname(source)
  for candidate in (folder, os.path.dirname(os.path.normpath(folder))):
    if os.path.exists(os.path.join(candidate, 'run.json')):
      return candidate
  return None


def _pct(value):
  return f'{100 * value:.2f} %'


def model_card(name, loaded, report, run_folder=None, command=None):
  """The Markdown model card of an exported model."""
  settings = {}
  if run_folder is not None:
    with open(os.path.join(run_folder, 'run.json')) as f:
      settings = json.load(f)
  step = _checkpoint_step(loaded.prefix)
  lines = [f'# {name}', '']
  recipe = settings.get('recipe') or {}
  what = settings.get('method')
  lines.append(
      f'SCAE, config `{loaded.config.name}`, trained on '
      f'{settings.get("dataset", report["dataset"])}'
      + (f' with the `{what}` defence' if what else
         f' with the `{recipe.get("name", "?")}` recipe')
      + (f', stopped at step {step}' if step is not None else '') + '.')
  lines += ['', '## Provenance', '']
  lines.append(f'- source checkpoint: `{loaded.prefix}` '
               f'({loaded.format.upper()})')
  if recipe:
    lines.append(f'- recipe `{recipe["name"]}`: {recipe["description"]}')
  for key in ('init_from', 'teacher', 'seed', 'phases', 'lr_schedule',
              'ad_target'):
    if key in settings and settings[key] is not None:
      lines.append(f'- {key}: `{json.dumps(settings[key])}`')
  if command:
    lines += ['', 'Trained with:', '', f'    {command}']
  deviations = curves.run_deviations(run_folder) if run_folder else []
  total = _planned_steps(settings, report['results']['n_train'])
  if step is not None and total and step < total:
    per_epoch = _steps_per_epoch(settings, report['results']['n_train'])
    deviations.append(
        f'stopped at step {step} of the {total} the run planned'
        + (f' (epoch {step / per_epoch:g} of {total / per_epoch:g})'
           if per_epoch else ''))
  deviations += [f'teacher: {d}' for d in
                 card_deviations(settings.get('teacher'))]
  lines += ['', DEVIATIONS_HEADING, '']
  lines += [f'- {d}' for d in deviations] or ['- none']
  results = report['results']
  lines += ['', '## Accuracy', '',
            'Cosine k-means (the fork\'s protocol, clusters matched to labels '
            'on the train split) and the linear probes, measured on the '
            f'exported weights ({results["n_train"]} train, '
            f'{results["n_test"]} test images, '
            f'{report["preprocess"]} preprocessing)'
            + (f', evaluated on the first {report["max_examples"]} examples '
               'of each split only (`--eval_examples='
               f'{report["max_examples"]}`)'
               if report.get('max_examples') else '') + ':', '',
            '| classifier | train | test | train + test |', '|---|---|---|---|']
  for kind, r in results['kmeans']['cosine'].items():
    lines.append(f'| k-means cosine / {kind} | {_pct(r["train"])} | '
                 f'{_pct(r["test"])} | {_pct(r["train+test"])} |')
  for kind, r in results['linear_probe'].items():
    lines.append(f'| linear probe / {kind} | '
                 + ' | '.join(_pct(r[s]) if s in r else '-'
                              for s in ('train', 'test')) + ' | - |')
  lines += ['', '## Use', '',
            f'    python run/attack.py --checkpoint=pretrained/{name} '
            '--classifier=PosK', '',
            '    from scae_tf import loading',
            f'    loaded = loading.load_model("pretrained/{name}")', '']
  return '\n'.join(lines)


def card_deviations(folder):
  """The deviations listed in the model card of `folder` (a shipped model,
  e.g. a defence's teacher); [] when it has no card."""
  path = os.path.join(folder, 'MODEL_CARD.md') if folder else None
  if not path or not os.path.exists(path):
    return []
  found, inside = [], False
  with open(path) as f:
    for line in f:
      if line.startswith('## '):
        inside = line.strip() == DEVIATIONS_HEADING
      elif inside and line.startswith('- ') and line.strip() != '- none':
        found.append(line[2:].strip())
  return found


def _checkpoint_step(prefix):
  tail = prefix.rsplit('-', 1)[-1]
  return int(tail) if tail.isdigit() else None


def _planned_steps(settings, n_train):
  """The steps the run meant to train, when its run.json says."""
  recipe = settings.get('recipe') or {}
  if recipe.get('train_steps'):
    return recipe['train_steps']
  epochs = (sum(p['epochs'] for p in settings['phases'])
            if settings.get('phases') else recipe.get('epochs'))
  per_epoch = _steps_per_epoch(settings, n_train)
  return epochs * per_epoch if epochs and per_epoch else None


def _steps_per_epoch(settings, n_train):
  batch = (settings.get('recipe') or {}).get('batch_size')
  return n_train // batch if batch else None
