"""The protocol as a graph of stages, each resumable and skipped when done.

A stage is plain data (name, kind, the stages it needs, its settings, its
output folder), so that an executor can ship it to another process or
machine. `run_stage` runs one: a call of the library function the `run/`
script of that kind calls, into the stage's own folder under the workdir.
The library resumes a stage that was interrupted (training from its newest
checkpoint, an attack from its finished batches). A finished stage leaves a
record, `<workdir>/stages/<name>.json`, with its settings: a later run skips
it if the settings are the same, and refuses it, naming the keys that
differ, if they are not (unless the stage is redone).

Stages, per model (the teacher, then each defence of the scale):
  teacher                   `scae_tf.teacher.train_teacher`
  train/<model>             `defenses.trainer.train_defense`
  kmeans/<model>            `scae_tf.evaluation.evaluate_checkpoint`: the
                            fork's cosine k-means (Tables 3, 5, 7)
  attack/<model>/<PriK|PosK> `attacks.pipeline.attack_checkpoint` (Tables
                            6, 8 and the adaptive worst case); with shards,
                            `attacks.pipeline.merge_shards` of:
  attack/<model>/<PriK|PosK>/shard<i>of<n>
                            `AttackRun(..., shard=(i, n))`: the
                            batches b with b % n == i, each shard a stage
                            that an executor may run beside the others
  report                    `reproduction.report.write`: tables and figures

A model can be adopted (an existing run or a shipped model): its training
stage is not run, and its k-means is the one beside it if it has one.

An attack stage merged from shards has the settings of the unsharded one,
so that either plan takes the other's finished attack as done; its shards
then have nothing to do ('merged'), and a redone attack attacks again, its
shards included.
"""

import dataclasses
import os
import time
from typing import Mapping, Optional, Sequence, Tuple

from reproduction import scales as scales_lib
from reproduction.records import ATTACK_KINDS
from reproduction.records import read_record
from reproduction.records import record_path
from reproduction.records import SHARD_KEYS
from reproduction.records import Stage
from reproduction.records import status
from reproduction.records import STAGES_DIR
from reproduction.records import to_json

KINDS = ('teacher', 'defence', 'kmeans', 'attack', 'attack_shard',
         'attack_merge', 'report')


class StageMismatchError(ValueError):
  """A stage was finished with other settings."""


def _steps_per_epoch(dataset, batch_size):
  from scae_tf import data  # pylint: disable=g-import-not-at-top
  return dict(data.get_dataset_spec(dataset).num_examples)['train'] // batch_size


def _teacher_estimate(dataset, scale):
  from scae_tf import teacher  # pylint: disable=g-import-not-at-top
  _, recipe = teacher.resolve(dataset, scale.config, scale.teacher_recipe,
                              teacher.RecipeOverrides(
                                  **scale.teacher_overrides))
  steps = recipe.train_steps or recipe.epochs * _steps_per_epoch(
      dataset, recipe.batch_size)
  return steps * scales_lib.COSTS['teacher'].seconds


def _defence_estimate(dataset, kwargs):
  """The steps times the measured cost of a step, which is the paper's
  generator's: another generator's step is unmeasured (None)."""
  from defenses import methods  # pylint: disable=g-import-not-at-top
  if kwargs.get('generator', 'paper_train') != 'paper_train':
    return None
  method = methods.get_method(kwargs['method'])
  phases = methods.plan(method, kwargs.get('ad_epochs'),
                        kwargs.get('at_epochs'), epochs=kwargs.get('epochs'),
                        preset=kwargs.get('preset', 'paper'))
  steps = sum(p.epochs for p in phases) * _steps_per_epoch(
      dataset, kwargs.get('batch_size') or 100)
  if kwargs.get('max_train_steps'):
    steps = min(steps, kwargs['max_train_steps'])
  return steps * scales_lib.COSTS['defence'].seconds


def _attack_estimate(scale):
  from attacks import pipeline  # pylint: disable=g-import-not-at-top
  names = pipeline.attack_names(scale.attack)
  if any(n in scales_lib.UNMEASURED_ATTACKS for n in names):
    return None
  # attack_checkpoint's sanity checks run after the attacks, every time.
  return scale.num_samples * sum(scales_lib.COSTS[f'attack_{n}'].seconds
                                 for n in tuple(names) + ('sanity',))


def _has_report(checkpoint):
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  return os.path.exists(loading.find_checkpoint(checkpoint) + '.eval.json')


def sharded(stage: Stage, shards: int) -> Tuple[Stage, ...]:
  """Attack stage `stage` as `shards` shard stages, each attacking the
  batches b with b % shards == i into a folder of its own, and the stage
  of its name that merges them into its folder."""
  from attacks import protocol  # pylint: disable=g-import-not-at-top
  samples, batch_size = (stage.settings['num_samples'],
                         stage.settings.get('batch_size', 100))
  parts = []
  for i in range(shards):
    share = sum(len(range(samples)[b * batch_size:(b + 1) * batch_size])
                for b in protocol.shard_batches(samples, batch_size,
                                                (i, shards)))
    parts.append(dataclasses.replace(
        stage, name=f'{stage.name}/shard{i}of{shards}', kind='attack_shard',
        settings=dict(stage.settings, shard=i, shards=shards),
        output=os.path.join(os.path.dirname(stage.output), 'shards',
                            os.path.basename(stage.output), f'{i}of{shards}'),
        estimate_s=(None if stage.estimate_s is None
                    else stage.estimate_s * share / samples),
        part_of=stage.name))
  return tuple(parts) + (dataclasses.replace(
      stage, kind='attack_merge', needs=tuple(p.name for p in parts),
      estimate_s=0.),)


def plan(dataset: str, scale, workdir: str,
         adopt: Optional[Mapping[str, str]] = None,
         shards: int = 1) -> Tuple[Stage, ...]:
  """The stages of `scale` (a `scales.Scale` or its name) on `dataset`, in
  an order that runs every stage after those it needs. `adopt` maps model
  names ('teacher', 'hat', ...) to existing checkpoints used as they are.
  `shards` > 1 splits every attack stage by sample (`sharded`)."""
  scale = scales_lib.get_scale(scale) if isinstance(scale, str) else scale
  if shards != 1:
    from attacks import run_spec  # pylint: disable=g-import-not-at-top
    run_spec.check_shard((0, shards), scale.num_samples,
                         scale.attack_overrides.get('batch_size', 100))
  adopt = dict(adopt or {})
  unknown = sorted(set(adopt) - set(scale.models()))
  if unknown:
    raise ValueError(f'--adopt names {unknown}, which the {scale.name} scale '
                     f'does not train; its models: {list(scale.models())}.')
  for name, path in adopt.items():
    if not (os.path.exists(path) or os.path.exists(path + '.index')):
      raise FileNotFoundError(f'--adopt {name}={path}: no such checkpoint, '
                              'file or folder.')
  config = (dataclasses.asdict(scale.config)
            if scale.config is not None and not isinstance(scale.config, str)
            else scale.config)
  common = dict(dataset=dataset, scale=scale.name, config=config)
  stages = []

  def model_stage(model, kind, settings, estimate):
    """The stage that trains `model`, or adopts it; `estimate()` is its
    cost, asked only for a stage that trains."""
    name = f'train/{model}' if kind == 'defence' else model
    if model in adopt:
      stage = Stage(name, kind, (), dict(adopted=os.path.abspath(
          adopt[model])), adopt[model], adopted=True, model=model,
                    estimate_s=0.)
    else:
      stage = Stage(name, kind, tuple(settings.pop('needs', ())), settings,
                    os.path.join(workdir, 'models', model), model=model,
                    estimate_s=estimate())
    stages.append(stage)
    return stage

  teacher = model_stage('teacher', 'teacher', dict(
      common, recipe=scale.teacher_recipe,
      overrides=dict(scale.teacher_overrides)),
                        lambda: _teacher_estimate(dataset, scale))
  models = {'teacher': teacher}
  for model, kwargs in scale.defences:
    models[model] = model_stage(model, 'defence', dict(
        common, teacher=teacher.output, needs=(teacher.name,),
        **dict(kwargs)), lambda kwargs=kwargs: _defence_estimate(dataset,
                                                                 kwargs))
  for model, trained in models.items():
    stages.append(Stage(
        f'kmeans/{model}', 'kmeans', (trained.name,), dict(
            common, checkpoint=trained.output,
            max_examples=scale.kmeans_examples),
        os.path.join(workdir, 'kmeans', model), model=model,
        estimate_s=(0. if trained.adopted and _has_report(trained.output)
                    else scales_lib.COSTS['kmeans'].seconds)))
    for classifier in scale.classifiers:
      attack = Stage(
          f'attack/{model}/{classifier}', 'attack', (f'kmeans/{model}',),
          dict(common, checkpoint=trained.output, classifier=classifier,
               num_samples=scale.num_samples, attack=scale.attack,
               **dict(scale.attack_overrides)),
          os.path.join(workdir, 'attacks', f'{model}_{classifier}'),
          model=model, classifier=classifier,
          estimate_s=_attack_estimate(scale))
      stages.extend(sharded(attack, shards) if shards != 1 else (attack,))
  stages.append(Stage('report', 'report', tuple(
      s.name for s in stages if s.kind in ('kmeans',) + ATTACK_KINDS),
                      dict(common, deviation=scale.deviation),
                      os.path.join(workdir, 'report'), estimate_s=0.))
  return tuple(stages)


def select(stages: Sequence[Stage], names: Optional[Sequence[str]]):
  """The stages named (a name, or a prefix ending in '/': 'attack/') and
  those they need, in order; all with no names."""
  if not names:
    return tuple(stages)
  by_name = {s.name: s for s in stages}
  wanted = set()
  for name in names:
    found = [s.name for s in stages
             if s.name == name or name.endswith('/') and
             s.name.startswith(name)]
    if not found:
      raise ValueError(f'Unknown stage {name!r}; stages: '
                       f'{[s.name for s in stages]}.')
    wanted.update(found)
  todo = list(wanted)
  while todo:
    for need in by_name[todo.pop()].needs:
      if need not in wanted:
        wanted.add(need)
        todo.append(need)
  return tuple(s for s in stages if s.name in wanted)


def with_dependents(stages: Sequence[Stage], names: Sequence[str]):
  """`names` and every stage that needs one of them, directly or not."""
  found = set(names)
  for stage in stages:  # plan order: a stage comes after what it needs
    if any(need in found for need in stage.needs):
      found.add(stage.name)
  return found


def redone(stages: Sequence[Stage], names: Sequence[str]):
  """What --redo=names runs again: the stages named, the shards of a named
  attack (redoing it means attacking again, not merging the old shards),
  and every stage that reads one of them."""
  return with_dependents(stages, set(names) | {
      s.name for s in stages if s.part_of in names})


def check_settings(stages: Sequence[Stage], workdir: str,
                   redo: Sequence[str] = ()):
  """Raises StageMismatchError, naming the keys that differ, for every
  stage finished with other settings and not to be redone; before any
  work."""
  from scae_tf import run_folder  # pylint: disable=g-import-not-at-top
  problems = []
  for stage in stages:
    if stage.name not in redo and status(stage, workdir) == 'changed':
      previous = read_record(workdir, stage.name)['settings']
      changed = run_folder.differences(previous, to_json(stage.settings))
      problems.append(f'{stage.name} ({changed})')
  if problems:
    raise StageMismatchError(
        'finished with other settings: ' + '; '.join(problems)
        + '. Use another --workdir, or --redo=STAGE to run it again.')


def run_stage(stage: Stage, workdir: str, redo: bool = False,
              progress: bool = True, log=print) -> dict:
  """Runs `stage` unless done with the same settings; returns its record."""
  state = status(stage, workdir)
  if state == 'adopted' or state == 'merged' and not redo:
    return dict(name=stage.name, status=state, output=stage.output)
  if state == 'done' and not redo:
    return read_record(workdir, stage.name)
  if state == 'changed' and not redo:
    check_settings([stage], workdir)
  log(f'stage {stage.name}: running into {stage.output}')
  start = time.time()
  output = _RUNNERS[stage.kind](stage, workdir, redo, progress, log)
  record = dict(name=stage.name, kind=stage.kind, status='done',
                settings=to_json(stage.settings), output=output,
                seconds=round(time.time() - start, 1),
                finished=time.strftime('%Y-%m-%d %H:%M:%S UTC',
                                       time.gmtime()))
  from scae_tf import files  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(workdir, STAGES_DIR), exist_ok=True)
  files.write_json(record_path(workdir, stage.name), record, sort_keys=True)
  return record


def _config(stage):
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  config = stage.settings['config']
  return configs.ScaeConfig(**config) if isinstance(config, dict) else config


def _teacher(stage, workdir, redo, progress, log):
  from scae_tf import teacher  # pylint: disable=g-import-not-at-top
  s = stage.settings
  teacher.train_teacher(
      s['dataset'], config=_config(stage), recipe=s['recipe'],
      overrides=teacher.RecipeOverrides(**s['overrides']),
      logdir=stage.output, overwrite=redo, progress=progress, log=log)
  return stage.output


_DEFENCE_KEYS = ('dataset', 'scale', 'config', 'teacher', 'method')


def _defence(stage, workdir, redo, progress, log):
  # pylint: disable=g-import-not-at-top
  from defenses import trainer
  from defenses.run_spec import DefenceRun
  # pylint: enable=g-import-not-at-top
  s = stage.settings
  kwargs = {k: v for k, v in s.items() if k not in _DEFENCE_KEYS}
  trainer.train_defense(
      DefenceRun(s['method'], dataset=s['dataset'], teacher=s['teacher'],
                 config=_config(stage), logdir=stage.output,
                 fit_kmeans=False, overwrite=redo, **kwargs),
      progress=progress, log=log)
  return stage.output


def kmeans_prefix(stage: Stage) -> str:
  """Where the k-means of a kmeans stage are: beside the model's checkpoint
  if its report is there (a shipped model), else in the stage's folder."""
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  if _has_report(stage.settings['checkpoint']):
    return loading.find_checkpoint(stage.settings['checkpoint'])
  return os.path.join(stage.output, 'model')


def _kmeans(stage, workdir, redo, progress, log):
  from scae_tf import evaluation  # pylint: disable=g-import-not-at-top
  s = stage.settings
  prefix = kmeans_prefix(stage)
  if prefix != os.path.join(stage.output, 'model'):
    log(f'stage {stage.name}: the k-means beside {prefix} are used as they '
        'are')
    return prefix
  os.makedirs(stage.output, exist_ok=True)
  evaluation.evaluate_checkpoint(
      s['checkpoint'], s['dataset'], config=_config(stage), kmeans='cosine',
      max_examples=s['max_examples'], out=prefix, progress=progress, log=log)
  return prefix


_ATTACK_KEYS = ('dataset', 'scale', 'config', 'checkpoint',
                'classifier') + SHARD_KEYS


def _attack(stage, workdir, redo, progress, log):
  """An attack stage, or one shard of it."""
  from attacks import classifiers  # pylint: disable=g-import-not-at-top
  from attacks import pipeline  # pylint: disable=g-import-not-at-top
  from attacks.run_spec import AttackRun  # pylint: disable=g-import-not-at-top
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  s = stage.settings
  kmeans = read_record(workdir, f'kmeans/{stage.model}')['output']
  kind = classifiers.feature_kind_of(s['classifier'])
  pipeline.attack_checkpoint(
      AttackRun(s['checkpoint'], s['classifier'], dataset=s['dataset'],
                config=_config(stage),
                kmeans=loading.kmeans_path(kmeans, kind, 'cosine'),
                out_dir=stage.output, overwrite=redo,
                shard=(s['shard'], s['shards']) if 'shard' in s else None,
                **{k: v for k, v in s.items() if k not in _ATTACK_KEYS}),
      progress=progress, log=log)
  return stage.output


def _merge(stage, workdir, redo, progress, log):
  from attacks import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.merge_shards(
      [read_record(workdir, name)['output'] for name in stage.needs],
      stage.output, overwrite=redo, progress=progress, log=log)
  return stage.output


def _report(stage, workdir, redo, progress, log):
  from reproduction import report  # pylint: disable=g-import-not-at-top
  return report.write(workdir, stage, log=log)


_RUNNERS = dict(teacher=_teacher, defence=_defence, kmeans=_kmeans,
                attack=_attack, attack_shard=_attack, attack_merge=_merge,
                report=_report)
