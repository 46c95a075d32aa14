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
(`scae_tf.evaluation`), and the per-epoch accuracy curve is drawn.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from attacks import evasion
from defenses import methods
from defenses import objectives
from defenses.adversarial_batches import AdversarialBatches
from scae_tf import configs
from scae_tf import data
from scae_tf import evaluation
from scae_tf import loading
from scae_tf import recipes
from scae_tf import training
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


def _saved_phase(prefix):
  """(step, phase) recorded in a checkpoint, or (0, 0) without one."""
  if prefix is None:
    return 0, 0
  reader = tf.train.load_checkpoint(prefix)
  step = reader.get_tensor('optimizer/step/.ATTRIBUTES/VARIABLE_VALUE')
  phase = reader.get_tensor('phase/.ATTRIBUTES/VARIABLE_VALUE')
  return int(step), int(phase)


def train_defense(method, dataset='mnist', teacher=None, logdir=None, seed=0,
                  ad_epochs=None, at_epochs=None, lr_schedule='code',
                  ad_target='input', ad_weight=0.5, clean_batches=1,
                  batch_size=None, learning_rate=None, attack_overrides=None,
                  data_dir=None, save_every=1000, fit_kmeans=True,
                  overwrite=False, progress=True, log=print, config=None,
                  stream=None):
  """Trains (or resumes) a defended SCAE; returns the last step's metrics.

  Args:
    method: 'at', 'ad', 'hat' or 'ntat'.
    teacher: the teacher for AD / HAT / NTAT: a run directory of
      run/train_teacher.py or any checkpoint `load_model` reads (original TF1
      ones included). Its config is the student's, with noise off.
    ad_epochs, at_epochs: override the method's phase lengths.
    lr_schedule: 'code' (what the authors' code ran) or 'decay' (Table 2).
    ad_target: 'input' (code) or 'clean' (Eq. 8 as written).
    batch_size, learning_rate, attack_overrides: deviations from the paper
      (tests, budgets); recorded in the run's identity.
    config: the model config of a method without teacher (default: the
      dataset's).
    stream: a batch stream to train on instead of the dataset's train split
      (small tests).
  """
  method = methods.get_method(method)
  phases = methods.plan(method, ad_epochs, at_epochs, lr_schedule)
  if ad_target not in objectives.AD_TARGETS:
    raise ValueError(f'Unknown ad_target {ad_target!r}; expected one of '
                     f'{objectives.AD_TARGETS}.')
  if method.needs_teacher and teacher is None:
    raise ValueError(f'--method={method.name} needs --teacher.')
  if save_every < 1:
    raise ValueError(f'save_every must be positive, got {save_every}.')
  recipe = _recipe(batch_size, learning_rate)
  attack_config = evasion.get_config('paper_train',
                                     **(attack_overrides or {}))
  data.get_dataset_spec(dataset)
  stream = stream or data.BatchStream(
      dataset, 'train', recipe.batch_size, preprocess=recipe.preprocess,
      seed=seed, data_dir=data_dir)
  teacher_model = None
  if teacher is not None:
    loaded = loading.load_model(teacher, dataset=dataset, kmeans=False)
    teacher_model, config = loaded.model, loaded.config.without_noise()
  else:
    config = (config or configs.get_config(dataset)).without_noise()
  logdir = logdir or os.path.join('runs', f'{method.name}_{dataset}')
  settings = training.run_settings(
      config, recipe, method=method.name, dataset=dataset, teacher=teacher,
      seed=seed, phases=[dataclasses.asdict(p) for p in phases],
      lr_schedule=lr_schedule, ad_target=ad_target, ad_weight=ad_weight,
      clean_batches=clean_batches, attack=dataclasses.asdict(attack_config))
  # Checks that write nothing first; then the folder is ours alone.
  training.check_logdir(logdir, settings, overwrite)
  with training.lock_folder(logdir):
    resumed = training.prepare_logdir(logdir, settings, overwrite)

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
                                 preset=attack_config)
    phase_var = tf.Variable(0, dtype=tf.int64, trainable=False, name='phase')
    state = dict(adversarial=batches, phase=phase_var)
    ad_loss = objectives.distillation_objective(ad_weight, ad_target)
    losses = dict(
        ad=ad_loss,
        at=lambda m, b, c: objectives.adversarial_training_objective(
            student, b, c))
    evaluators = [training.ProbeAccuracy(student, lambda: data.eval_batches(
        dataset, 'test', EVAL_BATCH, preprocess=recipe.preprocess,
        data_dir=data_dir))]

    spe = stream.steps_per_epoch
    ends = np.cumsum([p.epochs * spe for p in phases]).tolist()
    step, saved_phase = _saved_phase(
        tf.train.latest_checkpoint(os.path.join(logdir, CHECKPOINT_DIR)))
    log(f'{"resuming at step " + str(step) if resumed and step else "starting"}'
        f' {logdir}: {method.name} ({method.description}), phases '
        + ', '.join(f'{p.kind} {p.epochs} epochs' for p in phases)
        + f', lr {lr_schedule}, {spe} steps per epoch')
    metrics = {}
    for index, (phase, end) in enumerate(zip(phases, ends)):
      if step >= end and saved_phase >= index:
        continue
      optimizer = TF1RMSProp.for_recipe(
          student.trainable_variables,
          recipe.replace(lr_decay=phase.lr_decay, deviation=recipe.deviation))
      run_ckpt = RunCheckpoint(logdir, student, optimizer, state, config,
                               log=log)
      if saved_phase < index:
        _switch_phase(run_ckpt, index, step, phase_var, log)
      metrics = training.train_loop(
          model, optimizer, stream, logdir, end, noise=False, seed=seed,
          loss_fn=losses[phase.kind], prepare=batches, state=state,
          evaluators=evaluators, save_every=save_every, progress=progress,
          config=config, checkpoint_model=student, log=log,
          description=f'{method.name} phase {index + 1}/{len(phases)} '
                      f'({phase.kind})')
      step, saved_phase = end, index
    final = tf.train.latest_checkpoint(os.path.join(logdir, CHECKPOINT_DIR))
    if fit_kmeans:
      evaluation.evaluate_checkpoint(final, dataset, data_dir=data_dir,
                                     kmeans='cosine', progress=progress,
                                     log=log)
    curves.plot_runs([logdir], os.path.join(logdir, 'accuracy.png'),
                     title=f'{method.name.upper()} on {dataset}')
    log(f'done: {final}')
    return metrics


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
