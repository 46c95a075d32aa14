"""One trainer for AT, AD, HAT and NTAT on the training engine.

`train_defense(run)` is what `run/train_defense.py` runs, for the
`DefenceRun` (run_spec.py) its flags build: resolve (teacher, config,
phases, generator, identity), build (student, state, losses), train the
phases, finish (k-means, plot). A method (methods.py)
is a list of phases; each phase is one `scae_tf.training.train_loop` with
its loss (objectives.py), the adversarial batches (adversarial_batches.py)
as the step's `prepare`, and its own TF1 RMSProp. The run's checkpoint holds
the student, the optimiser, the adversarial counter and generator, and the
phase. The frozen teacher is loaded again from `teacher` on every start (its
path is part of the run's identity), so the run folder reads as a plain
SCAE checkpoint (`scae_tf.loading.load_model`, `run/attack.py`).

At the end the fork's cosine k-means (prior and posterior) is fitted on the
train split and saved beside the final checkpoint, with its report
(`scae_tf.evaluation`), and the per-epoch accuracy curve is drawn. A smoke
run fits it on the first N examples (`kmeans_examples`, a labelled
reduction) or skips it (`fit_kmeans=False`, said so).
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from defenses import methods
from defenses import objectives
from defenses.adversarial_batches import AdversarialBatches
from defenses.adversarial_batches import AdversarialFields
from defenses.adversarial_batches import Generator
from defenses.adversarial_batches import get_generator
from defenses.run_spec import DefenceRun
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import data
from scae_tf import evaluation
from scae_tf import loading
from scae_tf import recipes
from scae_tf import training
from scae_tf.kmeans import report as kmeans_report
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp
from scae_tf.training import curves

EVAL_BATCH = 500


def _recipe(batch_size=None, learning_rate=None):
  """The defences' recipe: paper Table 2 at batch 100, noise off."""
  recipe = recipes.get_recipe('paper').replace(
      noise=False, deviation=None, name='defence',
      description='the defence code: RMSProp lr 3e-5, batch 100, noise off')
  changes = {k: v for k, v in (('batch_size', batch_size),
                               ('learning_rate', learning_rate))
             if v is not None}
  return recipe.replace(**changes) if changes else recipe


def _deviations(method, phases, preset, recipe, clean_batches, ad_weight,
                generator, attack_overrides):
  """How a run departs from the paper's protocol (section 6.2), in words;
  empty for the paper's."""
  found = [text for text in (methods.init_deviation(method),
                             generator.deviation) if text]
  defaults = dict(method.phases)
  changed = [f'{p.kind.upper()} {p.epochs} epochs instead of '
             f'{defaults[p.kind]}' for p in phases
             if p.epochs != defaults[p.kind]]
  if changed:
    found.append(f'{preset.deviation} ({", ".join(changed)})'
                 if preset.deviation else ', '.join(changed))
  if recipe.deviation:
    found.append(recipe.deviation)
  if clean_batches != 1:
    found.append(f'k={clean_batches} clean batches between adversarial ones '
                 'instead of 1')
  if ad_weight != 0.5 and any(p.kind == 'ad' for p in phases):
    found.append(f'lambda={ad_weight} instead of 0.5')
  if attack_overrides:
    found.append(f'{generator.name} attack with ' + ', '.join(
        f'{k}={v}' for k, v in sorted(attack_overrides.items())))
  return found


@dataclasses.dataclass
class _Plan:
  """A `DefenceRun` resolved: what the run trains, on what, as whom."""
  run: DefenceRun
  method: methods.Method
  phases: tuple
  recipe: recipes.TrainingRecipe
  generator: Generator
  attack_config: object
  config: object
  teacher_model: object
  stream: object
  logdir: str
  deviations: list
  settings: dict


def train_defense(run: DefenceRun, *, progress=True, log=print, stream=None,
                  eval_data=None):
  """Trains (or resumes) the defended SCAE of `run`; returns the last
  step's metrics.

  Everything of `run` but the length (the phases' epochs, the preset that
  names them, max_train_steps), save_every, overwrite and the display is
  the run's identity (`run.json`): a run folder refuses other settings, and
  any departure from the paper is written there under 'deviations' and
  printed at the start. A run asked for other phase lengths resumes from
  its newest checkpoint, unless it has already trained past a changed phase
  end (HAT's switch).

  stream: a batch stream to train on instead of the dataset's train split;
  eval_data: a function returning the (images, labels) batches of the
  per-epoch probe accuracy instead of the dataset's test split (small
  tests).
  """
  plan = _resolve(run, stream)
  # Checks that write nothing first; then the folder is ours alone.
  length_change = (
      _check_length_change(plan.logdir, plan.phases,
                           plan.stream.steps_per_epoch)
      if training.check_logdir(plan.logdir, plan.settings, run.overwrite)
      else None)
  with training.lock_folder(plan.logdir):
    resumed = training.prepare_logdir(plan.logdir, plan.settings,
                                      run.overwrite)
    for text in plan.deviations:
      log(f'DEVIATION from the paper: {text}')
    if length_change:
      log(length_change)
    student, parts = _build(plan, eval_data, log)
    metrics, stop, end = _train_phases(plan, student, parts, resumed,
                                       progress, log)
    _finish(plan, parts['evaluators'][0], stop, end, progress, log)
    return metrics


def _resolve(run, stream):
  """The run's method, phases, recipe, generator, teacher, config, data and
  identity; a missing or mismatched teacher is refused before the data set
  is read."""
  method = run.resolved_method()
  phases = run.phases()
  recipe = _recipe(run.batch_size, run.learning_rate)
  generator = get_generator(run.generator)
  attack_config = dataclasses.replace(
      generator.config(**(run.attack_overrides or {})),
      jit_compile=bool(run.xla_generator))
  teacher_model = None
  if run.teacher is not None:
    loaded = loading.load_model(run.teacher, config=run.config,
                                dataset=run.dataset, kmeans=False)
    if loaded.config.dataset != run.dataset:
      raise checkpoints.CheckpointMismatchError(
          f'The teacher {run.teacher!r} is a {loaded.config.dataset} model '
          f'(config {loaded.config.name!r}); this run is on {run.dataset}.')
    teacher_model, config = loaded.model, loaded.config.without_noise()
  else:
    config = (run.config or configs.get_config(run.dataset)).without_noise()
  stream = stream or data.BatchStream(
      run.dataset, 'train', recipe.batch_size, preprocess=recipe.preprocess,
      seed=run.seed, data_dir=run.data_dir)
  deviations = _deviations(method, phases, methods.get_preset(run.preset),
                           recipe, run.clean_batches, run.ad_weight,
                           generator, run.attack_overrides)
  settings = training.run_settings(
      config, recipe, method=method.name, init=method.init,
      dataset=run.dataset, teacher=run.teacher, seed=run.seed,
      preset=run.preset, phases=[dataclasses.asdict(p) for p in phases],
      lr_schedule=run.lr_schedule, ad_target=run.ad_target,
      ad_weight=run.ad_weight, clean_batches=run.clean_batches,
      attack=dataclasses.asdict(attack_config), deviations=deviations,
      # Runs of the paper's generator made before the option resume.
      **({} if generator.name == 'paper_train'
         else dict(generator=generator.name)))
  return _Plan(run, method, phases, recipe, generator, attack_config, config,
               teacher_model, stream, run.run_folder(), deviations, settings)


def _build(plan, eval_data, log):
  """The student (from the teacher's weights if the method says so), what
  the losses see, the adversarial batches, the checkpointed state, the
  losses by phase kind and the per-epoch evaluator."""
  run = plan.run
  tf.random.set_seed(run.seed)
  np.random.seed(run.seed)
  student = SCAE(plan.config)
  if plan.method.init == 'teacher':
    for mine, theirs in zip(student.variables, plan.teacher_model.variables):
      mine.assign(theirs)
  model = (objectives.StudentTeacher(student, plan.teacher_model)
           if plan.teacher_model is not None else student)
  batches = AdversarialBatches(model, attacked=lambda _: student,
                               clean_batches=run.clean_batches, seed=run.seed,
                               generator=plan.generator.name,
                               preset=plan.attack_config)
  phase = tf.Variable(0, dtype=tf.int64, trainable=False, name='phase')
  # Checkpointed beside the student and optimiser, by these names.
  state = dict(adversarial=batches, phase=phase)
  losses = dict(
      ad=objectives.distillation_objective(run.ad_weight, run.ad_target),
      at=lambda m, b, c: objectives.adversarial_training_objective(
          student, b, c))
  evaluators = [training.ProbeAccuracy(student, eval_data or (
      lambda: data.eval_batches(run.dataset, 'test', EVAL_BATCH,
                                preprocess=plan.recipe.preprocess,
                                data_dir=run.data_dir)))]

  def checkpoint_of(phase_spec):
    optimizer = TF1RMSProp.for_recipe(
        student.trainable_variables,
        plan.recipe.replace(lr_decay=phase_spec.lr_decay,
                            deviation=plan.recipe.deviation))
    return training.RunCheckpoint(plan.logdir, student, optimizer, state,
                                  plan.config, log=log)

  return student, dict(model=model, batches=batches, phase=phase,
                       state=state, losses=losses, evaluators=evaluators,
                       checkpoint_of=checkpoint_of)


def _train_phases(plan, student, parts, resumed, progress, log):
  """Runs the phases from where the run stands (the newest checkpoint that
  reads back whole and finite, as the loop's own restore, or the start);
  returns the last step's metrics, the step it stopped at and the run's
  planned end."""
  run, phases, logdir = plan.run, plan.phases, plan.logdir
  checkpoint_of, phase_var = parts['checkpoint_of'], parts['phase']
  where = checkpoint_of(phases[0])
  restored = where.restore()
  step = int(where.optimizer.step.numpy()) if restored else 0
  saved_phase = int(phase_var.numpy()) if restored else 0
  spe = plan.stream.steps_per_epoch
  ends = methods.phase_ends(phases, spe)
  stop = min(ends[-1], run.max_train_steps or ends[-1])
  log(f'{"resuming at step " + str(step) if resumed and restored else "starting"}'
      f' {logdir}: {plan.method.name} ({plan.method.description}), phases '
      + ', '.join(f'{p.kind} {p.epochs} epochs' for p in phases)
      + f', lr {run.lr_schedule}, {spe} steps per epoch'
      + (f', stopping at step {stop} of {ends[-1]}' if stop < ends[-1]
         else ''))
  options = training.LoopOptions(
      noise=False, seed=run.seed, prepare=parts['batches'],
      state=parts['state'], evaluators=parts['evaluators'],
      save_every=run.save_every, progress=progress, config=plan.config,
      checkpoint_model=student, log=log)
  metrics = {}
  for index, (phase, end) in enumerate(zip(phases, ends)):
    if step >= end and saved_phase >= index:
      continue
    if step >= stop:
      break
    run_ckpt = checkpoint_of(phase)
    if saved_phase < index:
      _switch_phase(run_ckpt, index, step, phase_var, log)
    # Fresh fields each phase: the share of adversarial batches they show
    # is the phase's.
    metrics = training.train_loop(
        parts['model'], run_ckpt.optimizer, plan.stream, logdir,
        min(end, stop), options, loss_fn=parts['losses'][phase.kind],
        step_fields=AdversarialFields(),
        description=f'{plan.method.name} phase {index + 1}/{len(phases)} '
                    f'({phase.kind})')
    step, saved_phase = min(end, stop), index
  return metrics, stop, ends[-1]


def _finish(plan, probes, stop, end, progress, log):
  """After the last step: the probes' accuracy at a stop between epoch
  ends, the final k-means (or why not), the accuracy plot."""
  run, logdir = plan.run, plan.logdir
  spe = plan.stream.steps_per_epoch
  final = tf.train.latest_checkpoint(
      os.path.join(logdir, training.CHECKPOINT_DIR))
  if stop < end:
    log(f'stopped at step {stop} of {end} (--max_train_steps); the same '
        'command without it resumes the run')
  _log_final_probes(probes, logdir, stop, spe, log)
  if run.fit_kmeans:
    note = _fit_kmeans(final, run.dataset, run.data_dir, logdir, stop, spe,
                       run.kmeans_examples, progress, log)
  else:
    note = 'no final k-means (--nofit_kmeans)'
    log(f'{note}: PriK / PosK attacks need one; `python run/evaluate.py '
        f'--checkpoint={final} --dataset={run.dataset}` fits it')
  curves.plot_runs([logdir], os.path.join(logdir, 'accuracy.png'),
                   title=f'{plan.method.name.upper()} on {run.dataset}'
                   + (f', step {stop} of {end}' if stop < end else '')
                   + (f'; {note}' if note else ''))
  log(f'done: {final}')


def _check_length_change(logdir, phases, steps_per_epoch):
  """What a change of the phases' lengths does to the run in `logdir`, in
  words (None if they did not change); RunMismatchError if the run has
  already trained past it (`methods.length_change_error`)."""
  old = [methods.Phase(**p)
         for p in training.previous_settings(logdir)['phases']]
  if [p.epochs for p in old] == [p.epochs for p in phases]:
    return None
  step = training.newest_checkpoint_step(logdir)
  error = methods.length_change_error(old, phases, step, steps_per_epoch)
  if error:
    raise training.RunMismatchError(
        f'{logdir}: {error}. Use another --logdir, or --overwrite to restart '
        'it.')
  epochs = lambda plan: ' + '.join(f'{p.kind} {p.epochs}' for p in plan)
  return (f'the run\'s length changes from {epochs(old)} to {epochs(phases)} '
          f'epochs (newest checkpoint: step {step}); run.json keeps every '
          'length asked for')


def _kmeans_reduction(dataset, examples):
  """The final k-means' departure from all examples, in words, or None."""
  sizes = dict(data.get_dataset_spec(dataset).num_examples)
  if examples is None or examples >= sizes['train']:
    return None
  return (f'final k-means fitted on the first {examples} of '
          f'{sizes["train"]} train examples and scored on the first '
          f'{min(examples, sizes["test"])} of {sizes["test"]} test examples '
          f'(--kmeans_examples={examples}; the paper uses all)')


def _wall_time(logdir):
  """The run's clock at its last log record (the loop's `wall_time`)."""
  train, evals, kmeans = curves.read_log(logdir)
  return max((r.get('wall_time', 0.) for r in train + evals + kmeans),
             default=0.)


def _log_final_probes(evaluator, logdir, step, steps_per_epoch, log):
  """The probes' test accuracy at a stop between two epoch ends, where the
  loop does not evaluate (--max_train_steps), logged once: a short run's
  curve has its point."""
  if step % steps_per_epoch == 0 or any(
      r['step'] == step for r in curves.read_log(logdir)[1]):
    return
  values = evaluator(step)
  training.JsonlLog(os.path.join(logdir, training.LOG_FILE)).write(dict(
      step=step, epoch=step / steps_per_epoch, eval=True,
      wall_time=_wall_time(logdir), **values))
  log(f'step {step}: ' + ', '.join(f'{k} {v:.4f}' for k, v in values.items()))


def _fit_kmeans(final, dataset, data_dir, logdir, step, steps_per_epoch,
                examples, progress, log):
  """The fork's cosine k-means of the final checkpoint (train split), saved
  beside it; its test accuracy joins the run's per-epoch curve. Done once:
  a finished run started again finds it, unless it asks for another
  `examples` (the first N of each split; None: all). Returns the plot's
  note on a reduced fit, or None."""
  note = _kmeans_reduction(dataset, examples)
  path = f'{final}.eval.json'
  if os.path.exists(path):
    with open(path) as f:
      done = json.load(f).get('max_examples')
    if done == examples:
      log(f'{final} is evaluated already ({path})')
      return note and f'k-means on {examples} examples'
    log(f'{path} used {done or "all"} examples, this run asks for '
        f'{examples or "all"}: fitting again')
  if note:
    log(f'REDUCED evaluation: {note}')
  report = evaluation.evaluate_checkpoint(
      final, dataset, data_dir=data_dir, kmeans='cosine',
      max_examples=examples, progress=progress, log=log)
  results = report['results']
  log(kmeans_report.format_results(results))
  training.JsonlLog(os.path.join(logdir, training.LOG_FILE)).write(dict(
      step=step, epoch=step / steps_per_epoch, eval=True, kmeans=True,
      wall_time=_wall_time(logdir), kmeans_train_examples=results['n_train'],
      kmeans_test_examples=results['n_test'],
      **({'kmeans_examples': examples} if note else {}),
      **{f'kmeans_{kind}_test_acc': r['test']
         for kind, r in results['kmeans']['cosine'].items()}))
  return note and f'k-means on {examples} examples'


def _switch_phase(run_ckpt, index, step, phase_var, log):
  """Starts phase `index` at `step`: the student, counter and generator of
  the previous phase's last checkpoint, fresh RMSProp slots (as the authors'
  code, which rebuilds its graph), the global step carried over. Saved at
  once, so that a resumed run finds the new phase's optimiser."""
  if run_ckpt.restore():
    for ms, mom in zip(run_ckpt.optimizer.ms, run_ckpt.optimizer.mom):
      ms.assign(tf.ones_like(ms))
      mom.assign(tf.zeros_like(mom))
  run_ckpt.optimizer.step.assign(step)
  phase_var.assign(index)
  log(f'phase {index + 1} from step {step}: RMSProp slots restart')
  run_ckpt.save()
