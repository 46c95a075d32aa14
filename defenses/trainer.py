"""One trainer for AT, AD, HAT and NTAT on the training engine.

`train_defense` is what `run/train_defense.py` runs. A method (methods.py)
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
from defenses.adversarial_batches import get_generator
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import data
from scae_tf import evaluation
from scae_tf import loading
from scae_tf import recipes
from scae_tf import training
from scae_tf.kmeans import report as kmeans_report
from scae_tf.model import SCAE
from scae_tf.optim import TF1RMSProp
from scae_tf.training import curves
from scae_tf.training.loop import RunCheckpoint
from scae_tf.training.run_dir import CHECKPOINT_DIR

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


def train_defense(method, dataset='mnist', teacher=None, logdir=None, seed=0,
                  preset='paper', init=None, epochs=None, ad_epochs=None,
                  at_epochs=None, lr_schedule='code', ad_target='input',
                  ad_weight=0.5,
                  clean_batches=1, batch_size=None, learning_rate=None,
                  generator='paper_train', xla_generator=False,
                  attack_overrides=None,
                  max_train_steps=None, data_dir=None,
                  save_every=1000, fit_kmeans=True, kmeans_examples=None,
                  overwrite=False, progress=True, log=print, config=None,
                  stream=None, eval_data=None):
  """Trains (or resumes) a defended SCAE; returns the last step's metrics.

  Args:
    method: 'at', 'ad', 'hat' or 'ntat'.
    teacher: the teacher for AD / HAT / NTAT: a run directory of
      run/train_teacher.py or any checkpoint `load_model` reads (original TF1
      ones included). Its config is the student's, with noise off.
    preset: 'paper' (section 6.2's epochs) or 'cpu' (a labelled deviation).
    init: where the student starts, 'scratch' or 'teacher'; None: the
      method's own (AT, AD, HAT from scratch, NTAT from the teacher).
      Another start is a deviation (a CPU budget too short to train a
      student from scratch).
    epochs: the length of a one-phase method (AT, AD, NTAT).
    ad_epochs, at_epochs: the length of the method's AD / AT phase.
    lr_schedule: 'code' (what the authors' code ran) or 'decay' (Table 2).
    ad_target: 'input' (code) or 'clean' (Eq. 8 as written).
    ad_weight: lambda of Eq. 8. clean_batches: k, the clean batches
      between two adversarial ones.
    generator: G of Algorithm 5, a name of `adversarial_batches.GENERATORS`:
      'paper_train' (the paper's) or 'margin_pgd' (margin AT, beyond the
      paper, a deviation).
    xla_generator: XLA-compile the generator's inner loop inside the
      (uncompiled) training step. The same method, other float rounding:
      part of the run's identity (`attack.jit_compile`), not a deviation.
      Whether it is faster depends on the CPU (RESULTS.md, Speed).
    batch_size, learning_rate, attack_overrides: deviations from the paper
      (tests, budgets); attack_overrides apply to the generator's attack.
    max_train_steps: stop at this step (a smoke test, or a budget); the same
      command without it resumes the run to its end. A stopped run is
      evaluated as a finished one, and its report says where it stopped.
    fit_kmeans: fit the final cosine k-means (False: skip it, and say so).
    kmeans_examples: fit and score the final k-means on the first N
      examples of each split (`evaluation.evaluate_checkpoint`'s
      max_examples) instead of all: a smoke run's budget, labelled as a
      reduction in the log, log.jsonl, the .eval.json and the plot.
    config: the model config of a method without teacher (default: the
      dataset's); with a teacher, the config the teacher must have.
    stream: a batch stream to train on instead of the dataset's train split
      (small tests).
    eval_data: a function returning the (images, labels) batches of the
      per-epoch probe accuracy, instead of the dataset's test split (small
      tests).

  Everything but the length (the phases' epochs, the preset that names
  them, max_train_steps), save_every and the display is the run's identity
  (`run.json`): a run folder refuses other settings, and any departure from
  the paper is written there under 'deviations' and printed at the start.
  A run asked for other phase lengths resumes from its newest checkpoint,
  unless it has already trained past a changed phase end (HAT's switch).
  """
  method = methods.get_method(method).starting_from(init)
  preset = methods.get_preset(preset)
  phases = methods.plan(method, ad_epochs, at_epochs, lr_schedule,
                        epochs=epochs, preset=preset)
  if ad_target not in objectives.AD_TARGETS:
    raise ValueError(f'Unknown ad_target {ad_target!r}; expected one of '
                     f'{objectives.AD_TARGETS}.')
  if method.needs_teacher and teacher is None:
    raise ValueError(f'--method={method.name}'
                     + (' --init=teacher' if method.init == 'teacher' else '')
                     + ' needs --teacher.')
  if not method.needs_teacher and teacher is not None:
    raise ValueError(f'--method={method.name} trains from scratch and takes '
                     'no --teacher.')
  if not 0. <= ad_weight <= 1.:
    raise ValueError(f'--lambda_ must be in [0, 1], got {ad_weight}.')
  if clean_batches < 0:
    raise ValueError(f'--k must be >= 0, got {clean_batches}.')
  if save_every < 1:
    raise ValueError(f'save_every must be positive, got {save_every}.')
  if max_train_steps is not None and max_train_steps < 1:
    raise ValueError(f'--max_train_steps must be positive, got '
                     f'{max_train_steps}.')
  _check_kmeans_flags(fit_kmeans, kmeans_examples)
  recipe = _recipe(batch_size, learning_rate)
  generator = get_generator(generator)
  attack_config = dataclasses.replace(
      generator.config(**(attack_overrides or {})),
      jit_compile=bool(xla_generator))
  data.get_dataset_spec(dataset)
  teacher_model = None
  if teacher is not None:
    loaded = loading.load_model(teacher, config=config, dataset=dataset,
                                kmeans=False)
    if loaded.config.dataset != dataset:
      raise checkpoints.CheckpointMismatchError(
          f'The teacher {teacher!r} is a {loaded.config.dataset} model '
          f'(config {loaded.config.name!r}); this run is on {dataset}.')
    teacher_model, config = loaded.model, loaded.config.without_noise()
  else:
    config = (config or configs.get_config(dataset)).without_noise()
  # After the teacher: a missing or mismatched teacher is refused before
  # the data set is read.
  stream = stream or data.BatchStream(
      dataset, 'train', recipe.batch_size, preprocess=recipe.preprocess,
      seed=seed, data_dir=data_dir)
  deviations = _deviations(method, phases, preset, recipe, clean_batches,
                           ad_weight, generator, attack_overrides)
  logdir = logdir or os.path.join('runs', f'{method.name}_{dataset}')
  settings = training.run_settings(
      config, recipe, method=method.name, init=method.init, dataset=dataset,
      teacher=teacher, seed=seed, preset=preset.name,
      phases=[dataclasses.asdict(p) for p in phases],
      lr_schedule=lr_schedule, ad_target=ad_target, ad_weight=ad_weight,
      clean_batches=clean_batches, attack=dataclasses.asdict(attack_config),
      deviations=deviations,
      # Runs of the paper's generator made before the option resume.
      **({} if generator.name == 'paper_train'
         else dict(generator=generator.name)))
  # Checks that write nothing first; then the folder is ours alone.
  length_change = (
      _check_length_change(logdir, phases, stream.steps_per_epoch)
      if training.check_logdir(logdir, settings, overwrite) else None)
  with training.lock_folder(logdir):
    resumed = training.prepare_logdir(logdir, settings, overwrite)
    for text in deviations:
      log(f'DEVIATION from the paper: {text}')
    if length_change:
      log(length_change)

    tf.random.set_seed(seed)
    np.random.seed(seed)
    student = SCAE(config)
    if method.init == 'teacher':
      for mine, theirs in zip(student.variables, teacher_model.variables):
        mine.assign(theirs)
    model = (objectives.StudentTeacher(student, teacher_model)
             if teacher_model is not None else student)
    batches = AdversarialBatches(model, attacked=lambda _: student,
                                 clean_batches=clean_batches, seed=seed,
                                 generator=generator.name,
                                 preset=attack_config)
    phase_var = tf.Variable(0, dtype=tf.int64, trainable=False, name='phase')
    state = dict(adversarial=batches, phase=phase_var)
    losses = dict(
        ad=objectives.distillation_objective(ad_weight, ad_target),
        at=lambda m, b, c: objectives.adversarial_training_objective(
            student, b, c))
    evaluators = [training.ProbeAccuracy(student, eval_data or (
        lambda: data.eval_batches(dataset, 'test', EVAL_BATCH,
                                  preprocess=recipe.preprocess,
                                  data_dir=data_dir)))]

    def checkpoint_of(phase):
      optimizer = TF1RMSProp.for_recipe(
          student.trainable_variables,
          recipe.replace(lr_decay=phase.lr_decay, deviation=recipe.deviation))
      return RunCheckpoint(logdir, student, optimizer, state, config, log=log)

    # Where the run stands: the newest checkpoint that reads back whole and
    # finite (as the loop's own restore), or the start.
    where = checkpoint_of(phases[0])
    restored = where.restore()
    step = int(where.optimizer.step.numpy()) if restored else 0
    saved_phase = int(phase_var.numpy()) if restored else 0
    spe = stream.steps_per_epoch
    ends = np.cumsum([p.epochs * spe for p in phases]).tolist()
    stop = min(ends[-1], max_train_steps or ends[-1])
    log(f'{"resuming at step " + str(step) if resumed and restored else "starting"}'
        f' {logdir}: {method.name} ({method.description}), phases '
        + ', '.join(f'{p.kind} {p.epochs} epochs' for p in phases)
        + f', lr {lr_schedule}, {spe} steps per epoch'
        + (f', stopping at step {stop} of {ends[-1]}' if stop < ends[-1]
           else ''))
    metrics = {}
    for index, (phase, end) in enumerate(zip(phases, ends)):
      if step >= end and saved_phase >= index:
        continue
      if step >= stop:
        break
      run_ckpt = checkpoint_of(phase)
      if saved_phase < index:
        _switch_phase(run_ckpt, index, step, phase_var, log)
      metrics = training.train_loop(
          model, run_ckpt.optimizer, stream, logdir, min(end, stop),
          noise=False, seed=seed, loss_fn=losses[phase.kind], prepare=batches,
          state=state, evaluators=evaluators, save_every=save_every,
          progress=progress, config=config, checkpoint_model=student,
          log=log, description=f'{method.name} phase {index + 1}/'
                               f'{len(phases)} ({phase.kind})')
      step, saved_phase = min(end, stop), index
    final = tf.train.latest_checkpoint(os.path.join(logdir, CHECKPOINT_DIR))
    if stop < ends[-1]:
      log(f'stopped at step {stop} of {ends[-1]} (--max_train_steps); the '
          'same command without it resumes the run')
    _log_final_probes(evaluators[0], logdir, stop, spe, log)
    if fit_kmeans:
      note = _fit_kmeans(final, dataset, data_dir, logdir, stop, spe,
                         kmeans_examples, progress, log)
    else:
      note = 'no final k-means (--nofit_kmeans)'
      log(f'{note}: PriK / PosK attacks need one; `python run/evaluate.py '
          f'--checkpoint={final} --dataset={dataset}` fits it')
    curves.plot_runs([logdir], os.path.join(logdir, 'accuracy.png'),
                     title=f'{method.name.upper()} on {dataset}'
                     + (f', step {stop} of {ends[-1]}' if stop < ends[-1]
                        else '') + (f'; {note}' if note else ''))
    log(f'done: {final}')
    return metrics


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


def _check_kmeans_flags(fit_kmeans, examples):
  if examples is not None and examples < 1:
    raise ValueError(f'--kmeans_examples must be positive, got {examples}.')
  if examples is not None and not fit_kmeans:
    raise ValueError('--kmeans_examples sizes the final k-means that '
                     '--nofit_kmeans skips: give one of them.')


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
